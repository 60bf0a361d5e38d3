"""The store's API: the `Repository` facade, and its reads and writes of records (ingest, scoring, training
windows, counts, retention). Model versions and training runs are in `models`, reviews in `reviews`; SQLAlchemy
sessions never leave the store's classes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, suppress
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, insert, or_, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from detector.errors import StorageError
from detector.metrics import StoreSnapshot
from detector.records import Rejection, ValidRecord
from detector.store.bulk import (
    claim_pending,
    copy_outliers,
    insert_records,
    insert_scored_records,
    mark_scored,
    sqlite_rows,
)
from detector.store.faults import storage_error
from detector.store.models import ModelStore
from detector.store.reviews import Reviews, outlier_page, outlier_view
from detector.store.session import DEFAULT_WRITE_TIMEOUT_S, WriteGate, write_deadline
from detector.store.tables import (
    MaintenanceWindowRow,
    ModelVersionRow,
    OutlierRow,
    RecordRow,
    RejectRow,
    WatermarkRow,
)
from detector.store.types import (
    BATCH_KEY_PREFIX,
    DetectorCounts,
    IngestScores,
    OutlierFilter,
    OutlierView,
    PendingRecord,
    ScoredRecord,
)

__all__ = ["Repository", "batch_outcome"]

logger = logging.getLogger(__name__)


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


def _outlier_row(record_id: int, detector: str, record: ValidRecord | PendingRecord, score: float, threshold: float,
                 model_version_id: int, outlier: Mapping[str, Any], ood: dict[str, Any] | None,
                 now: datetime) -> dict[str, Any]:
    """The outliers-table row of a flagged record and its explanation."""
    return {"record_id": record_id, "detector": detector, "ts": record.ts, "key": record.key,
            "fields": record.fields, "score": score, "threshold": threshold, "model_version_id": model_version_id,
            "contributions": outlier["contributions"], "expected": outlier["expected"],
            "review_state": "unreviewed", "created_at": now, "ood": ood}


def batch_outcome(request: str, accepted: int, rejected: Sequence[Rejection]) -> str:
    """The value stored for a batch's idempotency key: what was asked (`request`, as the source gave it), how many
    records were stored and each rejection as the HTTP answer shows it (JSON, ASCII: NUL and lone surrogates of a
    rejected record come out escaped)."""
    return json.dumps({"request": request, "accepted": accepted, "rejected": [r.to_dict() for r in rejected]})


class Repository(ModelStore):
    """The store's API in domain terms. Every method is one transaction.

    Records (ingest, scoring, training windows, counts, retention) are here; model versions and training runs
    come from `ModelStore`, and reviews and maintenance windows are on `reviews`.
    """

    def __init__(self, sessions: sessionmaker[Session], write_timeout: float | None = None) -> None:
        # SQLite has one writer at a time; threads of this process that wait for it in SQLite's busy handler
        # sleep 1 to 100 ms per try, long after the lock is free. Writers queue on the store's write gate
        # instead (`detector.store.session`, one for this repository and its reviews) and take the database's
        # write lock as soon as the previous one lets it go; each waits at most `write_timeout` in all.
        bind = sessions.kw.get("bind")
        self._sqlite = bind is not None and bind.dialect.name == "sqlite"
        super().__init__(sessions)
        self._gate = WriteGate(write_timeout or DEFAULT_WRITE_TIMEOUT_S, self._sqlite)
        self.reviews = Reviews(sessions, self._gate)

    @property
    def write_timeout(self) -> float:
        """Seconds a write waits for the store at most (`store.write_timeout`)."""
        return self._gate.timeout

    def probe_write(self, timeout: float) -> None:
        """Check, within `timeout` seconds, that the store would take a write now; `StorageError` (or
        `StoreBusyError`) says why not. SQLite: this process's turn to write and the database's write lock,
        taken and let go at once (`BEGIN IMMEDIATE; ROLLBACK`); PostgreSQL: the server answers and is not
        read-only. Nothing is written; a lock that stays held or a failed probe is kept in `state`."""
        engine = self._sessions.kw["bind"]
        gate = self._gate
        try:
            with ExitStack() as stack:
                if self._sqlite:
                    stack.enter_context(write_deadline(time.monotonic() + timeout))
                    stack.enter_context(gate.hold("readiness probe"))
                conn = stack.enter_context(engine.connect())
                if self._sqlite:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {max(1, int(timeout * 1000))}")
                    try:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                        conn.exec_driver_sql("ROLLBACK")
                    finally:
                        with suppress(SQLAlchemyError):
                            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(gate.timeout * 1000)}")
                else:
                    conn.execute(text(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}"))
                    if conn.execute(text("SELECT current_setting('transaction_read_only')")).scalar() == "on":
                        raise StorageError("readiness probe", RuntimeError("the server is read-only"))
        except SQLAlchemyError as exc:
            error = storage_error("readiness probe", exc)
            gate.state.failed("readiness probe", error)
            raise error from exc
        except StorageError as exc:
            gate.state.failed("readiness probe", exc)
            raise
        if self._sqlite:                  # the write lock was there to take: a write now would go through
            gate.state.committed()

    def dispose(self) -> None:
        """Close the pooled connections (for tools and tests; the daemon keeps them)."""
        self._sessions.kw["bind"].dispose()

    # -- ingestion -------------------------------------------------------------------------
    def add_batch(self, detector: str, source: str, accepted: Sequence[ValidRecord],
                  rejected: Sequence[Rejection], origin: str | None = None,
                  watermark: tuple[str, str] | None = None, scored: IngestScores | None = None) -> None:
        """Store a batch's accepted records, its rejections and (optionally) a source watermark at once.

        With `scored` (one score per accepted record) the records are stored already scored, and the
        flagged ones as outliers, in the same transaction; without it they wait as pending for the score job.
        A watermark named `BATCH_KEY_PREFIX + key` (a batch's idempotency key) is stored with the batch's
        outcome: `{"request": <its value>, "accepted": n, "rejected": [...]}` (see `batch_outcome`).
        """
        now = datetime.now(UTC)
        if scored is not None and len(scored.scores) != len(accepted):
            raise ValueError(f"{len(scored.scores)} scores for {len(accepted)} accepted records")
        if watermark is not None and watermark[0].startswith(BATCH_KEY_PREFIX):
            watermark = (watermark[0], batch_outcome(watermark[1], len(accepted), rejected))
        rows = None
        if self._sqlite and accepted:        # formatted before queueing for the writer, which then only writes
            try:
                rows = sqlite_rows(detector, source, accepted, now, scored)
            except SQLAlchemyError as exc:
                raise storage_error("ingest", exc) from exc
        with self._tx("ingest") as session:
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
        # the claim reads; on SQLite the turn to write is taken only from the first write to the commit (and let
        # go after it), so that ingestion goes on while the batch is scored
        with ExitStack() as turn, self._tx("score", queue=False) as session:
            pending = [PendingRecord(*row) for row in claim_pending(session, detector, limit)]
            if not pending:
                return []
            scored = scorer(pending)
            turn.enter_context(self._gate.hold("score"))
            mark_scored(session, scored, model_version_id, now)
            by_id = {p.id: p for p in pending}
            outliers = [_outlier_row(s.id, detector, by_id[s.id], s.score, threshold, model_version_id,
                                     s.outlier, s.ood, now)
                        for s in scored if s.outlier is not None]
            if outliers:
                session.execute(insert(OutlierRow), outliers)
            return scored

    # -- training ----------------------------------------------------------------------------
    def training_window(self, detector: str, since: datetime, limit: int,
                        reviewed_in: Sequence[str] = ("dismissed",), spread: bool = False) -> list[PendingRecord]:
        """Trainable records since `since` (see `_trainable`), oldest first: the newest `limit`, or with `spread`
        `limit` records evenly spaced over all of them (the whole window's days and hours, not only its end;
        every one when there are no more than `limit`)."""
        where = (RecordRow.detector == detector, RecordRow.ts >= since, _trainable(reviewed_in))
        with self._read("read training window") as session:
            count = 0
            if spread:
                count = int(session.scalar(select(func.count()).select_from(RecordRow).where(*where)) or 0)
            if count > limit:
                rank = func.row_number().over(order_by=(RecordRow.ts, RecordRow.id)).label("rank")
                inner = (select(RecordRow.id, RecordRow.ts, RecordRow.key, RecordRow.fields, rank)
                         .where(*where).subquery())
                # rank r is kept where floor(r * limit / count) steps up: exactly `limit` of them, evenly spaced
                rows = session.execute(
                    select(inner.c.id, inner.c.ts, inner.c.key, inner.c.fields)
                    .where((inner.c.rank * limit) // count > ((inner.c.rank - 1) * limit) // count)
                    .order_by(inner.c.rank)
                ).all()
                return [PendingRecord(r.id, r.ts, r.key, r.fields) for r in rows]
            rows = session.execute(
                select(RecordRow.id, RecordRow.ts, RecordRow.key, RecordRow.fields)
                .where(*where).order_by(RecordRow.ts.desc(), RecordRow.id.desc()).limit(limit)
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

    def flagged_unreviewed(self, detector: str, since: datetime, limit: int) -> list[PendingRecord]:
        """Records since `since` that a model flagged and nobody has reviewed yet, outside maintenance windows,
        oldest first: the newest `limit`. The training window leaves them out; they may still be the top of
        the normal tail."""
        where = (RecordRow.detector == detector, RecordRow.ts >= since, RecordRow.is_outlier.is_(True),
                 _reviewed_into_training(("unreviewed",)), ~_in_maintenance())
        with self._read("read flagged records") as session:
            rows = session.execute(
                select(RecordRow.id, RecordRow.ts, RecordRow.key, RecordRow.fields)
                .where(*where).order_by(RecordRow.ts.desc(), RecordRow.id.desc()).limit(limit)
            ).all()
        return [PendingRecord(r.id, r.ts, r.key, r.fields) for r in reversed(rows)]

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
        """The newest `limit` outliers (by id), of `detector` and since `since` when given: the reviews' query."""
        with self._read("list outliers") as session:
            return outlier_page(session, OutlierFilter(detector=detector, since=since), limit, 0, "id", True)

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

    def scored_records(self, detector: str) -> list[tuple[PendingRecord, float | None, bool, int | None,
                                                         float | None]]:
        """Every record of a detector in time order: (record, score, is_outlier, the number of the model version
        that scored it, that version's threshold); score and version None for a record still pending."""
        stmt = (select(RecordRow.id, RecordRow.ts, RecordRow.key, RecordRow.fields, RecordRow.score,
                       RecordRow.is_outlier, ModelVersionRow.version, ModelVersionRow.threshold)
                .outerjoin(ModelVersionRow, ModelVersionRow.id == RecordRow.model_version_id)
                .where(RecordRow.detector == detector).order_by(RecordRow.ts, RecordRow.id))
        with self._read("read scored records") as session:
            rows = session.execute(stmt).all()
        return [(PendingRecord(r.id, r.ts, r.key, r.fields), None if r.score is None else float(r.score),
                 bool(r.is_outlier), r.version, None if r.threshold is None else float(r.threshold)) for r in rows]

    def top_outliers(self, detector: str, model_version_id: int, limit: int) -> list[OutlierView]:
        """The outliers a model version flagged, highest score / threshold first."""
        stmt = (select(OutlierRow, ModelVersionRow.version)
                .join(ModelVersionRow, ModelVersionRow.id == OutlierRow.model_version_id)
                .where(OutlierRow.detector == detector, OutlierRow.model_version_id == model_version_id)
                .order_by((OutlierRow.score / OutlierRow.threshold).desc(), OutlierRow.id.desc()).limit(limit))
        with self._read("read top outliers") as session:
            rows = session.execute(stmt).all()
        return [outlier_view(o, version) for o, version in rows]

    # -- retention ---------------------------------------------------------------------------
    def purge(self, records_before: datetime, rejects_before: datetime,
              batch_keys_before: datetime | None = None) -> tuple[int, int]:
        """Delete scored, unflagged records and rejects older than the cut-offs; outliers stay. With
        `batch_keys_before`, batch idempotency keys stored before it go too (their batches stay).

        A record is old when both its time and its arrival are before the cut-off, so history
        imported with old timestamps is kept for the retention period after it arrived.
        """
        with self._tx("retention") as session:
            records = session.execute(delete(RecordRow).where(
                RecordRow.state == "scored", RecordRow.is_outlier.is_(False), RecordRow.ts < records_before,
                RecordRow.ingested_at < records_before))
            rejects = session.execute(delete(RejectRow).where(RejectRow.received_at < rejects_before))
            if batch_keys_before is not None:
                session.execute(delete(WatermarkRow).where(WatermarkRow.name.startswith(BATCH_KEY_PREFIX),
                                                           WatermarkRow.updated_at < batch_keys_before))
            return int(records.rowcount or 0), int(rejects.rowcount or 0)  # type: ignore[attr-defined]
