"""All reads and writes of the store; SQLAlchemy sessions never leave this module."""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, delete, exists, func, insert, or_, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from detector.errors import StorageError, VigilError
from detector.metrics import StoreSnapshot
from detector.records import Rejection, ValidRecord
from detector.store._bulk import (
    claim_pending,
    copy_outliers,
    insert_records,
    insert_scored_records,
    mark_scored,
    sqlite_rows,
)
from detector.store.tables import (
    MaintenanceWindowRow,
    ModelVersionRow,
    OutlierRow,
    RecordRow,
    RejectRow,
    TrainingRunRow,
    WatermarkRow,
)

__all__ = [
    "DetectorCounts",
    "IngestScores",
    "ModelVersion",
    "OutlierView",
    "PendingRecord",
    "Repository",
    "ScoredRecord",
    "TrainingRun",
]

logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the daemon stopped"


class PendingRecord(NamedTuple):
    """A stored record as the scorer and the trainer read it (a NamedTuple: immutable, and several times
    cheaper to create than a frozen dataclass, which matters at one per record)."""

    id: int
    ts: datetime
    key: str | None
    fields: dict[str, Any]


class ScoredRecord(NamedTuple):
    """The scoring result of one pending record; `outlier` holds the explanation when flagged, and
    `suppressed` why alerting kept a record over the threshold from being flagged."""

    id: int
    score: float
    outlier: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None
    suppressed: str | None = None


@dataclass(frozen=True, slots=True)
class IngestScores:
    """Scores of a batch's accepted records, computed before they are stored (scoring on ingest): the
    records go in as `scored` in the same transaction, with their outliers. Per record (in batch order)
    its score; by record index, the explanations of the flagged ones, their out-of-distribution notes and
    why alert hygiene held back a record over the threshold."""

    model_version_id: int
    threshold: float
    scores: list[float]
    outliers: dict[int, dict[str, Any]]
    ood: dict[int, dict[str, Any]]
    suppressed: dict[int, str]


@dataclass(frozen=True, slots=True)
class ModelVersion:
    id: int
    detector: str
    version: int
    status: str
    created_at: datetime
    activated_at: datetime | None
    window_start: datetime | None
    window_end: datetime | None
    n_records: int
    threshold: float
    meta: dict[str, Any]
    weights: bytes | None = None


@dataclass(frozen=True, slots=True)
class OutlierView:
    id: int
    record_id: int | None
    detector: str
    ts: datetime
    key: str | None
    fields: dict[str, Any]
    score: float
    threshold: float
    model_version: int
    contributions: list[dict[str, Any]]
    expected: dict[str, Any]
    review_state: str
    created_at: datetime
    ood: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TrainingRun:
    id: int
    detector: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    result: str
    message: str | None
    n_records: int | None
    duration_s: float | None
    train_loss: float | None
    val_loss: float | None
    model_version: int | None
    diversity: dict[str, Any] | None = None


@dataclass(slots=True)
class DetectorCounts:
    pending: int = 0
    scored: int = 0
    rejected: int = 0
    outliers: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _reviewed_into_training(states: Sequence[str]) -> ColumnElement[bool]:
    """The record's outlier row has a review state that lets it into training (e.g. dismissed)."""
    return exists().where(OutlierRow.record_id == RecordRow.id, OutlierRow.review_state.in_(list(states)))


def _in_maintenance() -> ColumnElement[bool]:
    return exists().where(MaintenanceWindowRow.detector == RecordRow.detector,
                          MaintenanceWindowRow.start <= RecordRow.ts, MaintenanceWindowRow.end > RecordRow.ts)


def _trainable(reviewed_in: Sequence[str]) -> ColumnElement[bool]:
    """Records a model may learn from: not flagged (or flagged and reviewed into training), and not
    inside a maintenance window."""
    allowed: ColumnElement[bool] = RecordRow.is_outlier.is_(False)
    if reviewed_in:
        allowed = or_(allowed, _reviewed_into_training(reviewed_in))
    return and_(allowed, ~_in_maintenance())


def _model(row: ModelVersionRow, with_weights: bool) -> ModelVersion:
    return ModelVersion(
        id=row.id, detector=row.detector, version=row.version, status=row.status,
        created_at=row.created_at, activated_at=row.activated_at, window_start=row.window_start,
        window_end=row.window_end, n_records=row.n_records, threshold=row.threshold, meta=row.meta,
        weights=row.weights if with_weights else None,
    )


def _outlier_row(record_id: int, detector: str, record: ValidRecord | PendingRecord, score: float, threshold: float,
                 model_version_id: int, outlier: Mapping[str, Any], ood: dict[str, Any] | None,
                 now: datetime) -> dict[str, Any]:
    """The outliers-table row of a flagged record and its explanation."""
    return {"record_id": record_id, "detector": detector, "ts": record.ts, "key": record.key,
            "fields": record.fields, "score": score, "threshold": threshold, "model_version_id": model_version_id,
            "contributions": outlier["contributions"], "expected": outlier["expected"],
            "review_state": "unreviewed", "created_at": now, "ood": ood}


class Repository:
    """The store's API in domain terms. Every method is one transaction."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        from detector.store.reviews import Reviews

        self._sessions = sessions
        self.reviews = Reviews(sessions)
        # SQLite has one writer at a time; threads of this process that wait for it in SQLite's busy handler
        # sleep 1 to 100 ms per try, long after the lock is free. The hot writers (ingest, scoring) queue
        # here instead and take the database's write lock as soon as the previous one lets it go.
        bind = sessions.kw.get("bind")
        self._sqlite = bind is not None and bind.dialect.name == "sqlite"
        self._writer = threading.Lock()
        # bumped whenever this process changes a detector's active model (readers that cache the active
        # version compare it instead of asking the store each time)
        self.model_changes = 0

    def _writing(self) -> AbstractContextManager[Any]:
        return self._writer if self._sqlite else nullcontext()

    def dispose(self) -> None:
        """Close the pooled connections (for tools and tests; the daemon keeps them)."""
        self._sessions.kw["bind"].dispose()

    @contextmanager
    def _tx(self, operation: str) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(operation, exc) from exc

    @contextmanager
    def _read(self, operation: str) -> Iterator[Session]:
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(operation, exc) from exc

    # -- ingestion -------------------------------------------------------------------------
    def add_batch(self, detector: str, source: str, accepted: Sequence[ValidRecord],
                  rejected: Sequence[Rejection], origin: str | None = None,
                  watermark: tuple[str, str] | None = None, scored: IngestScores | None = None) -> None:
        """Store a batch's accepted records, its rejections and (optionally) a source watermark at once.

        With `scored` (one score per accepted record) the records are stored already scored, and the
        flagged ones as outliers, in the same transaction; without it they wait as pending for the score job.
        """
        now = datetime.now(UTC)
        if scored is not None and len(scored.scores) != len(accepted):
            raise ValueError(f"{len(scored.scores)} scores for {len(accepted)} accepted records")
        rows = None
        if self._sqlite and accepted:        # formatted before queueing for the writer, which then only writes
            try:
                rows = sqlite_rows(detector, source, accepted, now, scored)
            except SQLAlchemyError as exc:
                raise StorageError("ingest", exc) from exc
        with self._writing(), self._tx("ingest") as session:
            if accepted and scored is not None:
                ids = insert_scored_records(session, detector, source, accepted, scored, now, rows)
                if scored.outliers:
                    outliers = [_outlier_row(ids[i], detector, accepted[i], scored.scores[i], scored.threshold,
                                             scored.model_version_id, outlier, scored.ood.get(i), now)
                                for i, outlier in sorted(scored.outliers.items())]
                    if self._sqlite:
                        session.execute(insert(OutlierRow), outliers)
                    else:
                        copy_outliers(session, outliers)
            elif accepted:
                insert_records(session, detector, source, accepted, now, rows)
            if rejected:
                session.execute(insert(RejectRow), [
                    {"detector": detector, "source": source, "origin": origin, "record_index": r.index,
                     "field": r.field, "reason": r.reason, "message": r.message[:2000], "raw": r.raw,
                     "received_at": now}
                    for r in rejected
                ])
            if watermark is not None:
                self._put_watermark(session, detector, watermark[0], watermark[1], now)

    def _put_watermark(self, session: Session, detector: str, name: str, value: str, now: datetime) -> None:
        row = session.get(WatermarkRow, (detector, name))
        if row is None:
            session.add(WatermarkRow(detector=detector, name=name, value=value, updated_at=now))
        else:
            row.value, row.updated_at = value, now

    def watermark(self, detector: str, name: str) -> str | None:
        with self._read("read watermark") as session:
            row = session.get(WatermarkRow, (detector, name))
            return row.value if row else None

    # -- scoring -----------------------------------------------------------------------------
    def score_pending(self, detector: str, limit: int, model_version_id: int, threshold: float,
                      scorer: Callable[[list[PendingRecord]], list[ScoredRecord]]) -> list[ScoredRecord]:
        """Claim up to `limit` pending records, score them and store results and outliers atomically."""
        now = datetime.now(UTC)
        # the claim reads; on SQLite the write lock is taken only from the first write to the commit, so that
        # ingestion goes on while the batch is scored
        locked = False
        try:
            with self._tx("score") as session:
                pending = [PendingRecord(*row) for row in claim_pending(session, detector, limit)]
                if not pending:
                    return []
                scored = scorer(pending)
                if self._sqlite:
                    self._writer.acquire()
                    locked = True
                mark_scored(session, scored, model_version_id, now)
                by_id = {p.id: p for p in pending}
                outliers = [_outlier_row(s.id, detector, by_id[s.id], s.score, threshold, model_version_id,
                                         s.outlier, s.ood, now)
                            for s in scored if s.outlier is not None]
                if outliers:
                    session.execute(insert(OutlierRow), outliers)
                return scored
        finally:
            if locked:
                self._writer.release()

    # -- training ----------------------------------------------------------------------------
    def training_window(self, detector: str, since: datetime, limit: int,
                        reviewed_in: Sequence[str] = ("dismissed",)) -> list[PendingRecord]:
        """The newest `limit` trainable records since `since`, oldest first (see `_trainable`)."""
        with self._read("read training window") as session:
            rows = session.execute(
                select(RecordRow.id, RecordRow.ts, RecordRow.key, RecordRow.fields)
                .where(RecordRow.detector == detector, RecordRow.ts >= since, _trainable(reviewed_in))
                .order_by(RecordRow.ts.desc(), RecordRow.id.desc()).limit(limit)
            ).all()
        return [PendingRecord(r.id, r.ts, r.key, r.fields) for r in reversed(rows)]

    def history(self, detector: str, before: Mapping[str | None, datetime], limit: int) -> list[PendingRecord]:
        """Up to `limit` records of each key in `before` with a timestamp before that key's time, in any
        state, oldest first (what a sequence model needs ahead of the records it scores)."""
        if not before or limit < 1:
            return []
        conditions = [
            and_(RecordRow.key.is_(None) if key is None else RecordRow.key == key, RecordRow.ts < ts)
            for key, ts in before.items()
        ]
        rank = func.row_number().over(partition_by=RecordRow.key,
                                      order_by=(RecordRow.ts.desc(), RecordRow.id.desc())).label("rank")
        inner = (select(RecordRow.id, RecordRow.ts, RecordRow.key, RecordRow.fields, rank)
                 .where(RecordRow.detector == detector, or_(*conditions)).subquery())
        with self._read("read key history") as session:
            rows = session.execute(
                select(inner.c.id, inner.c.ts, inner.c.key, inner.c.fields).where(inner.c.rank <= limit)
                .order_by(inner.c.ts, inner.c.id)
            ).all()
        return [PendingRecord(r.id, r.ts, r.key, r.fields) for r in rows]

    def recent_exceedances(self, detector: str, before: Mapping[str | None, datetime],
                           limit: int) -> dict[str | None, list[bool]]:
        """For each key in `before`, whether each of its newest `limit` scored records before that key's
        time passed the threshold of the model version that scored it, oldest first (what k-of-n
        confirmation needs ahead of a batch). Passing the threshold is not being an outlier: a record
        in a maintenance window or suppressed by alerting passed it all the same."""
        if not before or limit < 1:
            return {}
        conditions = [
            and_(RecordRow.key.is_(None) if key is None else RecordRow.key == key, RecordRow.ts < ts)
            for key, ts in before.items()
        ]
        rank = func.row_number().over(partition_by=RecordRow.key,
                                      order_by=(RecordRow.ts.desc(), RecordRow.id.desc())).label("rank")
        inner = (select(RecordRow.id, RecordRow.ts, RecordRow.key, RecordRow.score, RecordRow.is_outlier,
                        ModelVersionRow.threshold, rank)
                 .outerjoin(ModelVersionRow, ModelVersionRow.id == RecordRow.model_version_id)
                 .where(RecordRow.detector == detector, RecordRow.state == "scored", or_(*conditions))
                 .subquery())
        with self._read("read recent exceedances") as session:
            rows = session.execute(
                select(inner.c.key, inner.c.score, inner.c.is_outlier, inner.c.threshold)
                .where(inner.c.rank <= limit).order_by(inner.c.ts, inner.c.id)
            ).all()
        flags: dict[str | None, list[bool]] = {}
        for key, score, is_outlier, threshold in rows:   # a record whose version is gone: its outlier bit
            over = bool(is_outlier) if threshold is None or score is None else score > threshold
            flags.setdefault(key, []).append(over)
        return flags

    def count_flagged(self, detector: str, since: datetime, reviewed_in: Sequence[str] = ("dismissed",)) -> int:
        """Records since `since` left out of training because a model flagged them (and no review let them in)."""
        with self._read("count flagged records") as session:
            return int(session.scalar(
                select(func.count()).select_from(RecordRow)
                .where(RecordRow.detector == detector, RecordRow.ts >= since, RecordRow.is_outlier.is_(True),
                       ~_reviewed_into_training(reviewed_in))
            ) or 0)

    def earliest_ts(self, detector: str) -> datetime | None:
        with self._read("read earliest record time") as session:
            return session.scalar(select(func.min(RecordRow.ts)).where(RecordRow.detector == detector))

    def latest_ts(self, detector: str) -> datetime | None:
        with self._read("read latest record time") as session:
            return session.scalar(select(func.max(RecordRow.ts)).where(RecordRow.detector == detector))

    def count_window(self, detector: str, since: datetime, reviewed_in: Sequence[str] = ("dismissed",)) -> int:
        with self._read("count training window") as session:
            return int(session.scalar(
                select(func.count()).select_from(RecordRow)
                .where(RecordRow.detector == detector, RecordRow.ts >= since, _trainable(reviewed_in))
            ) or 0)

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
            raise StorageError("trainer lock", exc) from exc
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

    def last_counted_run(self, detector: str) -> TrainingRun | None:
        """The newest training run that was not skipped (the one a schedule slot is judged by)."""
        with self._read("read training runs") as session:
            row = session.scalar(select(TrainingRunRow).where(
                TrainingRunRow.detector == detector, TrainingRunRow.result != "skipped")
                .order_by(TrainingRunRow.id.desc()).limit(1))
            if row is None:
                return None
            return TrainingRun(id=row.id, detector=row.detector, trigger=row.trigger, started_at=row.started_at,
                               finished_at=row.finished_at, result=row.result, message=row.message,
                               n_records=row.n_records, duration_s=row.duration_s, train_loss=row.train_loss,
                               val_loss=row.val_loss, model_version=None, diversity=row.diversity)

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

    def save_model(self, detector: str, weights: bytes, meta: dict[str, Any], threshold: float,
                   n_records: int, window_start: datetime | None, window_end: datetime | None,
                   activate: bool = True, run_id: int | None = None) -> ModelVersion:
        """Store a new model version; when `activate`, retire the active one in the same transaction.

        With `run_id`, that training run is marked successful (naming the version) in the same
        transaction, so that no crash can leave a model whose run a restart records as failed.
        """
        now = datetime.now(UTC)
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
            saved = _model(row, with_weights=False)
        if activate:
            self.model_changes += 1
        return saved

    def promote(self, detector: str, version: int) -> ModelVersion:
        """Make `version` the active model of `detector` (the active one is retired) in one transaction."""
        now = datetime.now(UTC)
        with self._tx("promote model") as session:
            row = session.scalar(select(ModelVersionRow).where(
                ModelVersionRow.detector == detector, ModelVersionRow.version == version).with_for_update())
            if row is None:
                raise VigilError(f"detector {detector!r} has no model version {version}")
            if row.status == "pruned" or not row.weights:
                raise VigilError(f"model version {version} of {detector!r} was pruned (its weights are gone)")
            if row.status != "active":
                session.execute(update(ModelVersionRow).where(
                    ModelVersionRow.detector == detector, ModelVersionRow.status == "active"
                ).values(status="retired"))
                row.status, row.activated_at = "active", now
            session.flush()
            promoted = _model(row, with_weights=False)
        self.model_changes += 1
        return promoted

    def rollback(self, detector: str) -> ModelVersion:
        """Activate the newest usable version older than the active one."""
        active = self.active_model(detector, with_weights=False)
        if active is None:
            raise VigilError(f"detector {detector!r} has no active model to roll back from")
        with self._read("find previous model") as session:
            previous = session.scalar(select(ModelVersionRow.version).where(
                ModelVersionRow.detector == detector, ModelVersionRow.version < active.version,
                ModelVersionRow.status.in_(("retired", "candidate"))).order_by(ModelVersionRow.version.desc()))
        if previous is None:
            raise VigilError(f"detector {detector!r} has no earlier model version to roll back to")
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

    def active_model(self, detector: str, with_weights: bool = True) -> ModelVersion | None:
        with self._read("read active model") as session:
            row = session.scalar(select(ModelVersionRow).where(
                ModelVersionRow.detector == detector, ModelVersionRow.status == "active"))
            return _model(row, with_weights) if row else None

    def active_model_id(self, detector: str) -> int | None:
        with self._read("read active model") as session:
            return session.scalar(select(ModelVersionRow.id).where(
                ModelVersionRow.detector == detector, ModelVersionRow.status == "active"))

    def get_model(self, detector: str, version: int) -> ModelVersion | None:
        with self._read("read model") as session:
            row = session.scalar(select(ModelVersionRow).where(
                ModelVersionRow.detector == detector, ModelVersionRow.version == version))
            return _model(row, with_weights=False) if row else None

    def list_models(self, detector: str | None = None, limit: int = 100) -> list[ModelVersion]:
        stmt = select(ModelVersionRow).order_by(ModelVersionRow.detector, ModelVersionRow.version.desc())
        if detector:
            stmt = stmt.where(ModelVersionRow.detector == detector)
        with self._read("list models") as session:
            return [_model(r, False) for r in session.scalars(stmt.limit(limit))]

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
        return [
            TrainingRun(id=r.id, detector=r.detector, trigger=r.trigger, started_at=r.started_at,
                        finished_at=r.finished_at, result=r.result, message=r.message,
                        n_records=r.n_records, duration_s=r.duration_s, train_loss=r.train_loss,
                        val_loss=r.val_loss, model_version=version, diversity=r.diversity)
            for r, version in rows
        ]

    # -- reading -----------------------------------------------------------------------------
    def count_by_state(self) -> dict[tuple[str, str], int]:
        with self._read("count records") as session:
            rows = session.execute(select(RecordRow.detector, RecordRow.state, func.count())
                                   .group_by(RecordRow.detector, RecordRow.state)).all()
        return {(d, s): int(n) for d, s, n in rows}

    def metrics_snapshot(self) -> StoreSnapshot:
        """Records by state, oldest pending arrival, active model times and review backlog, per detector."""
        records = self.count_by_state()
        with self._read("read metrics snapshot") as session:
            oldest = session.execute(select(RecordRow.detector, func.min(RecordRow.ingested_at))
                                     .where(RecordRow.state == "pending").group_by(RecordRow.detector)).all()
            models = session.execute(select(ModelVersionRow.detector, ModelVersionRow.created_at)
                                     .where(ModelVersionRow.status == "active")).all()
            reviews = session.execute(select(OutlierRow.detector, OutlierRow.review_state, func.count())
                                      .group_by(OutlierRow.detector, OutlierRow.review_state)).all()
        by_state: dict[str, dict[str, int]] = {"unreviewed": {}, "confirmed": {}, "dismissed": {}}
        for detector, state, n in reviews:
            by_state.setdefault(state, {})[detector] = int(n)
        return StoreSnapshot(
            records=records,
            oldest_pending={d: t.timestamp() for d, t in oldest if t is not None},
            model_trained={d: t.timestamp() for d, t in models},
            unreviewed=by_state["unreviewed"], confirmed=by_state["confirmed"], dismissed=by_state["dismissed"])

    def counts(self) -> dict[str, DetectorCounts]:
        """Records by state, rejects and outliers for every detector that has any."""
        result: dict[str, DetectorCounts] = {}
        for (det, state), n in self.count_by_state().items():
            counts = result.setdefault(det, DetectorCounts())
            if state in ("pending", "scored"):
                setattr(counts, state, n)
            else:
                counts.extra[state] = n
        with self._read("count rejects and outliers") as session:
            for det, n in session.execute(select(RejectRow.detector, func.count()).group_by(RejectRow.detector)):
                result.setdefault(det, DetectorCounts()).rejected = int(n)
            for det, n in session.execute(select(OutlierRow.detector, func.count()).group_by(OutlierRow.detector)):
                result.setdefault(det, DetectorCounts()).outliers = int(n)
        return result

    def list_outliers(self, detector: str | None = None, since: datetime | None = None,
                      limit: int = 50) -> list[OutlierView]:
        stmt = (select(OutlierRow, ModelVersionRow.version)
                .join(ModelVersionRow, ModelVersionRow.id == OutlierRow.model_version_id)
                .order_by(OutlierRow.id.desc()).limit(limit))
        if detector:
            stmt = stmt.where(OutlierRow.detector == detector)
        if since:
            stmt = stmt.where(OutlierRow.ts >= since)
        with self._read("list outliers") as session:
            rows = session.execute(stmt).all()
        return [
            OutlierView(id=o.id, record_id=o.record_id, detector=o.detector, ts=o.ts, key=o.key,
                        fields=o.fields, score=o.score, threshold=o.threshold, model_version=version,
                        contributions=o.contributions, expected=o.expected, review_state=o.review_state,
                        created_at=o.created_at, ood=o.ood)
            for o, version in rows
        ]

    def list_rejects(self, detector: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        stmt = select(RejectRow).order_by(RejectRow.id.desc()).limit(limit)
        if detector:
            stmt = stmt.where(RejectRow.detector == detector)
        with self._read("list rejects") as session:
            return [
                {"id": r.id, "detector": r.detector, "source": r.source, "origin": r.origin,
                 "index": r.record_index, "field": r.field, "reason": r.reason, "message": r.message,
                 "received_at": r.received_at.isoformat()}
                for r in session.scalars(stmt)
            ]

    def recent_scored(self, detector: str, limit: int,
                      model_version_id: int | None = None) -> list[tuple[PendingRecord, float, bool]]:
        """(record, score, is_outlier) of the newest `limit` scored records, oldest first; with
        `model_version_id`, only the records that model version scored."""
        stmt = (select(RecordRow.id, RecordRow.ts, RecordRow.key, RecordRow.fields, RecordRow.score,
                       RecordRow.is_outlier)
                .where(RecordRow.detector == detector, RecordRow.state == "scored")
                .order_by(RecordRow.ts.desc(), RecordRow.id.desc()).limit(limit))
        if model_version_id is not None:
            stmt = stmt.where(RecordRow.model_version_id == model_version_id)
        with self._read("read recent scores") as session:
            rows = session.execute(stmt).all()
        return [(PendingRecord(r.id, r.ts, r.key, r.fields), float(r.score), bool(r.is_outlier))
                for r in reversed(rows)]

    def top_outliers(self, detector: str, model_version_id: int, limit: int) -> list[OutlierView]:
        """The outliers a model version flagged, highest score / threshold first."""
        stmt = (select(OutlierRow, ModelVersionRow.version)
                .join(ModelVersionRow, ModelVersionRow.id == OutlierRow.model_version_id)
                .where(OutlierRow.detector == detector, OutlierRow.model_version_id == model_version_id)
                .order_by((OutlierRow.score / OutlierRow.threshold).desc(), OutlierRow.id.desc()).limit(limit))
        with self._read("read top outliers") as session:
            rows = session.execute(stmt).all()
        return [
            OutlierView(id=o.id, record_id=o.record_id, detector=o.detector, ts=o.ts, key=o.key,
                        fields=o.fields, score=o.score, threshold=o.threshold, model_version=version,
                        contributions=o.contributions, expected=o.expected, review_state=o.review_state,
                        created_at=o.created_at, ood=o.ood)
            for o, version in rows
        ]

    # -- retention ---------------------------------------------------------------------------
    def purge(self, records_before: datetime, rejects_before: datetime) -> tuple[int, int]:
        """Delete scored, unflagged records and rejects older than the cut-offs; outliers stay.

        A record is old when both its time and its arrival are before the cut-off, so history
        imported with old timestamps is kept for the retention period after it arrived.
        """
        with self._tx("retention") as session:
            records = session.execute(delete(RecordRow).where(
                RecordRow.state == "scored", RecordRow.is_outlier.is_(False), RecordRow.ts < records_before,
                RecordRow.ingested_at < records_before))
            rejects = session.execute(delete(RejectRow).where(RejectRow.received_at < rejects_before))
            return int(records.rowcount or 0), int(rejects.rowcount or 0)  # type: ignore[attr-defined]
