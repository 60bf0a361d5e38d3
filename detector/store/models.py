"""The model half of the repository: model versions (save, promote, roll back, prune) and training runs."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, Select, Text, cast, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from detector.errors import (
    ModelPrunedError,
    NoActiveModelError,
    NoEarlierModelError,
    UnknownModelVersionError,
)
from detector.store.faults import storage_error
from detector.store.session import SessionScope
from detector.store.tables import ModelVersionRow, TrainingRunRow
from detector.store.types import ModelVersion, TrainingRun

__all__ = ["INTERRUPTED", "WEIGHTS_SHA256", "ModelStore", "artifact_problem"]

INTERRUPTED = "interrupted: the daemon stopped"
WEIGHTS_SHA256 = "weights_sha256"     # the metadata key of the weights' checksum, written by save_model
_FALLBACK_STATUSES = ("retired", "candidate")

# every column of a model version, the metadata as its stored text: one row whose metadata is not JSON must
# not make every read of the table fail (it is parsed by `_parse_meta`, which says what is wrong with it)
_COLUMNS = (ModelVersionRow.id, ModelVersionRow.detector, ModelVersionRow.version, ModelVersionRow.status,
            ModelVersionRow.created_at, ModelVersionRow.activated_at, ModelVersionRow.window_start,
            ModelVersionRow.window_end, ModelVersionRow.n_records, ModelVersionRow.threshold,
            cast(ModelVersionRow.meta, Text).label("meta_text"))


def _select(with_weights: bool) -> Select[Any]:
    return select(*_COLUMNS, ModelVersionRow.weights) if with_weights else select(*_COLUMNS)


def _parse_meta(stored: str | None) -> tuple[dict[str, Any], str | None]:
    """A version's metadata from its stored text, or an empty one and why it cannot be read."""
    if stored is None:
        return {}, "its metadata is missing"
    try:
        meta = json.loads(stored)
    except ValueError as exc:
        return {}, f"its metadata is not JSON ({exc})"
    if not isinstance(meta, dict):
        return {}, f"its metadata is a JSON {type(meta).__name__}, not an object"
    return meta, None


def _version(row: Row[Any], with_weights: bool) -> ModelVersion:
    """A model version from a row of `_select`."""
    meta, problem = _parse_meta(row.meta_text)
    return ModelVersion(
        id=row.id, detector=row.detector, version=row.version, status=row.status,
        created_at=row.created_at, activated_at=row.activated_at, window_start=row.window_start,
        window_end=row.window_end, n_records=row.n_records, threshold=row.threshold, meta=meta,
        weights=row.weights if with_weights else None, problem=problem,
    )


def _model(row: ModelVersionRow) -> ModelVersion:
    """A model version from the row object this process just wrote (its metadata is the dict it was given)."""
    return ModelVersion(
        id=row.id, detector=row.detector, version=row.version, status=row.status,
        created_at=row.created_at, activated_at=row.activated_at, window_start=row.window_start,
        window_end=row.window_end, n_records=row.n_records, threshold=row.threshold, meta=row.meta,
    )


def artifact_problem(model: ModelVersion) -> str | None:
    """Why a stored version (read with its weights) cannot be loaded, as far as the store can tell: its
    metadata is unreadable, its weights were pruned, or they are not the bytes saved with it (their SHA-256
    differs from the checksum in its metadata). None: the model library may try it. Versions saved before
    checksums were written have none, and are not checked."""
    if model.problem is not None:
        return model.problem
    if not model.weights:
        return "it has no weights (pruned)"
    expected = model.meta.get(WEIGHTS_SHA256)
    if expected is None:
        return None
    actual = hashlib.sha256(model.weights).hexdigest()
    if actual != expected:
        return (f"its weights do not match the checksum saved with them (SHA-256 {actual[:16]}..., saved "
                f"{str(expected)[:16]}...): they were changed or replaced")
    return None


def _run(row: TrainingRunRow, version: int | None) -> TrainingRun:
    """A training-runs row, with the number of the model version it made (None: none, or not looked up)."""
    return TrainingRun(id=row.id, detector=row.detector, trigger=row.trigger, started_at=row.started_at,
                       finished_at=row.finished_at, result=row.result, message=row.message,
                       n_records=row.n_records, duration_s=row.duration_s, train_loss=row.train_loss,
                       val_loss=row.val_loss, model_version=version, diversity=row.diversity)


class ModelStore(SessionScope):
    """Model versions and training runs, each method one transaction. `Repository` is one (it inherits
    these methods), so that they are called on the repository like the rest of the store's API."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__(sessions)
        # bumped whenever this process changes a detector's active model (readers that cache the active
        # version compare it instead of asking the store each time)
        self.model_changes = 0

    # -- training runs -----------------------------------------------------------------------
    @contextmanager
    def trainer_lock(self, detector: str) -> Iterator[bool]:
        """Whether this process may train `detector` now: on PostgreSQL a session advisory lock held
        for the block (one trainer per detector across instances); elsewhere always True."""
        engine = self._sessions.kw["bind"]
        if engine.dialect.name != "postgresql":
            yield True
            return
        key = zlib.crc32(f"vigil-train:{detector}".encode())
        try:
            conn = engine.connect()
        except SQLAlchemyError as exc:
            raise storage_error("trainer lock", exc) from exc
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
        finally:
            conn.close()

    def start_training_run(self, detector: str, trigger: str) -> int:
        with self._tx("start training run") as session:
            row = TrainingRunRow(detector=detector, trigger=trigger, started_at=datetime.now(UTC),
                                 result="running")
            session.add(row)
            session.flush()
            return row.id

    def finish_training_run(self, run_id: int, result: str, message: str | None = None,
                            n_records: int | None = None, duration_s: float | None = None,
                            train_loss: float | None = None, val_loss: float | None = None,
                            model_version_id: int | None = None, diversity: dict[str, Any] | None = None) -> None:
        with self._tx("finish training run") as session:
            session.execute(update(TrainingRunRow).where(TrainingRunRow.id == run_id).values(
                finished_at=datetime.now(UTC), result=result, message=message, n_records=n_records,
                duration_s=duration_s, train_loss=train_loss, val_loss=val_loss,
                model_version_id=model_version_id, diversity=diversity))

    def abandon_running_runs(self, detector: str) -> int:
        """Mark runs of `detector` left `running` by a stopped process (killed mid-training) as failed.

        Call it holding the detector's trainer lock, so that no live instance is training it.
        """
        with self._tx("abandon training runs") as session:
            result = session.execute(update(TrainingRunRow).where(
                TrainingRunRow.detector == detector, TrainingRunRow.result == "running").values(
                result="failed", finished_at=datetime.now(UTC), message=INTERRUPTED))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def last_training_run(self, detector: str) -> TrainingRun | None:
        runs = self.list_training_runs(detector, limit=1)
        return runs[0] if runs else None

    def list_training_runs(self, detector: str, limit: int = 20) -> list[TrainingRun]:
        with self._read("list training runs") as session:
            rows = session.execute(
                select(TrainingRunRow, ModelVersionRow.version)
                .outerjoin(ModelVersionRow, ModelVersionRow.id == TrainingRunRow.model_version_id)
                .where(TrainingRunRow.detector == detector)
                .order_by(TrainingRunRow.id.desc()).limit(limit)).all()
        return [_run(r, version) for r, version in rows]

    def last_counted_run(self, detector: str) -> TrainingRun | None:
        """The newest training run that was not skipped (the one a schedule slot is judged by)."""
        with self._read("read training runs") as session:
            row = session.scalar(select(TrainingRunRow).where(
                TrainingRunRow.detector == detector, TrainingRunRow.result != "skipped")
                .order_by(TrainingRunRow.id.desc()).limit(1))
            if row is None:
                return None
            return _run(row, None)

    # -- model versions ----------------------------------------------------------------------
    def save_model(self, detector: str, weights: bytes, meta: dict[str, Any], threshold: float,
                   n_records: int, window_start: datetime | None, window_end: datetime | None,
                   activate: bool = True, run_id: int | None = None) -> ModelVersion:
        """Store a new model version; when `activate`, retire the active one in the same transaction.

        With `run_id`, that training run is marked successful (naming the version) in the same
        transaction, so that no crash can leave a model whose run a restart records as failed.
        """
        now = datetime.now(UTC)
        meta = {**meta, WEIGHTS_SHA256: hashlib.sha256(weights).hexdigest()}
        with self._tx("save model") as session:
            last = session.scalar(select(func.max(ModelVersionRow.version))
                                  .where(ModelVersionRow.detector == detector)) or 0
            if activate:
                session.execute(update(ModelVersionRow).where(
                    ModelVersionRow.detector == detector, ModelVersionRow.status == "active"
                ).values(status="retired"))
            row = ModelVersionRow(
                detector=detector, version=last + 1, status="active" if activate else "candidate",
                created_at=now, activated_at=now if activate else None, window_start=window_start,
                window_end=window_end, n_records=n_records, threshold=threshold, weights=weights, meta=meta)
            session.add(row)
            session.flush()
            if run_id is not None:
                session.execute(update(TrainingRunRow).where(TrainingRunRow.id == run_id).values(
                    result="success", finished_at=now, model_version_id=row.id,
                    message=f"model version {row.version} {'active' if activate else 'saved'}"))
            saved = _model(row)
        if activate:
            self.model_changes += 1
        return saved

    def promote(self, detector: str, version: int) -> ModelVersion:
        """Make `version` the active model of `detector` (the active one is retired) in one transaction."""
        now = datetime.now(UTC)
        with self._tx("promote model") as session:
            found = session.execute(select(
                ModelVersionRow.id, ModelVersionRow.status, func.length(ModelVersionRow.weights).label("size"))
                .where(ModelVersionRow.detector == detector, ModelVersionRow.version == version)
                .with_for_update()).first()
            if found is None:
                raise UnknownModelVersionError(detector, version)
            if found.status == "pruned" or not found.size:
                raise ModelPrunedError(detector, version)
            if found.status != "active":
                session.execute(update(ModelVersionRow).where(
                    ModelVersionRow.detector == detector, ModelVersionRow.status == "active"
                ).values(status="retired"))
                session.execute(update(ModelVersionRow).where(ModelVersionRow.id == found.id).values(
                    status="active", activated_at=now))
            promoted = _version(session.execute(_select(False).where(ModelVersionRow.id == found.id)).one(), False)
        self.model_changes += 1
        return promoted

    def rollback(self, detector: str) -> ModelVersion:
        """Activate the newest usable version older than the active one."""
        active = self.active_model(detector, with_weights=False)
        if active is None:
            raise NoActiveModelError(detector, f"detector {detector!r} has no active model to roll back from")
        with self._read("find previous model") as session:
            previous = session.scalar(select(ModelVersionRow.version).where(
                ModelVersionRow.detector == detector, ModelVersionRow.version < active.version,
                ModelVersionRow.status.in_(("retired", "candidate"))).order_by(ModelVersionRow.version.desc()))
        if previous is None:
            raise NoEarlierModelError(detector)
        return self.promote(detector, previous)

    def prune_models(self, detector: str, keep: int) -> int:
        """Drop the weights of all but the newest `keep` versions (never the active one); rows stay."""
        with self._tx("prune models") as session:
            keep_ids = select(ModelVersionRow.id).where(ModelVersionRow.detector == detector).order_by(
                ModelVersionRow.version.desc()).limit(keep).scalar_subquery()
            result = session.execute(update(ModelVersionRow).where(
                ModelVersionRow.detector == detector, ModelVersionRow.status != "active",
                ModelVersionRow.status != "pruned", ModelVersionRow.id.not_in(keep_ids)
            ).values(status="pruned", weights=b""))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def reject_model(self, model: ModelVersion, reason: str, fallback: ModelVersion | None = None) -> bool:
        """Set aside a version that cannot be loaded: its status becomes `rejected` and its metadata (where
        readable) records why. Where it was the active version and `fallback` is given, that version becomes
        active in the same transaction. True when it did (False: `model` was no longer active, another
        process changed the active version, or `fallback` is no longer usable; then nothing is activated)."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {"status": "rejected"}
        if model.problem is None:      # unreadable metadata stays as it is, for a person to look at
            values["meta"] = {**model.meta, "rejected": {
                "reason": reason, "at": now.isoformat(), "fallback": fallback.version if fallback else None}}
        row = ModelVersionRow
        with self._tx("reject model") as session:
            was_active = _count(session.execute(update(row).where(
                row.id == model.id, row.status == "active").values(**values))) == 1
            if not was_active:
                session.execute(update(row).where(row.id == model.id, row.status.in_(_FALLBACK_STATUSES))
                                .values(**values))
            activated = was_active and fallback is not None and _count(session.execute(update(row).where(
                row.id == fallback.id, row.status.in_(_FALLBACK_STATUSES), func.length(row.weights) > 0,
            ).values(status="active", activated_at=now))) == 1
        if was_active:
            self.model_changes += 1
        return activated

    def fallback_versions(self, detector: str) -> list[int]:
        """The versions a broken active one may fall back to (retired or candidate, with weights), newest first."""
        with self._read("list fallback models") as session:
            return list(session.scalars(select(ModelVersionRow.version).where(
                ModelVersionRow.detector == detector, ModelVersionRow.status.in_(_FALLBACK_STATUSES),
                func.length(ModelVersionRow.weights) > 0).order_by(ModelVersionRow.version.desc())))

    def rejected_models(self, detector: str, limit: int = 5) -> list[ModelVersion]:
        """The newest versions set aside because they could not be loaded."""
        with self._read("list rejected models") as session:
            rows = session.execute(_select(False).where(
                ModelVersionRow.detector == detector, ModelVersionRow.status == "rejected")
                .order_by(ModelVersionRow.version.desc()).limit(limit)).all()
        return [_version(r, False) for r in rows]

    def active_model(self, detector: str, with_weights: bool = True) -> ModelVersion | None:
        with self._read("read active model") as session:
            row = session.execute(_select(with_weights).where(
                ModelVersionRow.detector == detector, ModelVersionRow.status == "active")).first()
            return _version(row, with_weights) if row else None

    def active_model_id(self, detector: str) -> int | None:
        with self._read("read active model") as session:
            return session.scalar(select(ModelVersionRow.id).where(
                ModelVersionRow.detector == detector, ModelVersionRow.status == "active"))

    def get_model(self, detector: str, version: int, with_weights: bool = False) -> ModelVersion | None:
        with self._read("read model") as session:
            row = session.execute(_select(with_weights).where(
                ModelVersionRow.detector == detector, ModelVersionRow.version == version)).first()
            return _version(row, with_weights) if row else None

    def list_models(self, detector: str | None = None, limit: int = 100) -> list[ModelVersion]:
        stmt = _select(False).order_by(ModelVersionRow.detector, ModelVersionRow.version.desc())
        if detector:
            stmt = stmt.where(ModelVersionRow.detector == detector)
        with self._read("list models") as session:
            return [_version(r, False) for r in session.execute(stmt.limit(limit))]


def _count(result: Any) -> int:
    """The number of rows an UPDATE matched."""
    return int(result.rowcount or 0)
