"""Reads and writes of reviews: outlier queries with filters, verdicts, maintenance windows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from detector.store.faults import check_text
from detector.store.session import SessionScope, WriteGate
from detector.store.tables import MaintenanceWindowRow, ModelVersionRow, OutlierRow, RecordRow
from detector.store.types import (
    REVIEW_STATES,
    VERDICTS,
    MaintenanceWindow,
    OutlierDetail,
    OutlierFilter,
    OutlierView,
    SortKey,
)

__all__ = ["Reviews", "outlier_page", "outlier_view"]

logger = logging.getLogger(__name__)


def outlier_view(o: OutlierRow, version: int) -> OutlierView:
    """An outliers-table row as the store gives it, with the number of the model version that flagged it."""
    return OutlierView(id=o.id, record_id=o.record_id, detector=o.detector, ts=o.ts, key=o.key, fields=o.fields,
                       score=o.score, threshold=o.threshold, model_version=version, contributions=o.contributions,
                       expected=o.expected, review_state=o.review_state, created_at=o.created_at, ood=o.ood)


def _filtered(stmt: Select[Any], f: OutlierFilter) -> Select[Any]:
    conditions = []
    if f.detector:
        conditions.append(OutlierRow.detector == f.detector)
    if f.since:
        conditions.append(OutlierRow.ts >= f.since)
    if f.until:
        conditions.append(OutlierRow.ts < f.until)
    if f.review_state:
        conditions.append(OutlierRow.review_state == f.review_state)
    if f.min_score is not None:
        conditions.append(OutlierRow.score >= f.min_score)
    if f.min_ratio is not None:
        conditions.append(OutlierRow.score >= OutlierRow.threshold * f.min_ratio)
    if f.key:
        conditions.append(OutlierRow.key == f.key)
    return stmt.where(and_(*conditions)) if conditions else stmt


def outlier_page(session: Session, f: OutlierFilter, limit: int, offset: int, sort: SortKey,
                 descending: bool) -> list[OutlierView]:
    """One page of the outliers matching `f`, in `sort` order (ties by id, the same way), read in `session`."""
    column = {"ts": OutlierRow.ts, "score": OutlierRow.score, "id": OutlierRow.id,
              "ratio": OutlierRow.score / OutlierRow.threshold}[sort]
    order = (column.desc(), OutlierRow.id.desc()) if descending else (column.asc(), OutlierRow.id.asc())
    stmt = _filtered(select(OutlierRow, ModelVersionRow.version)
                     .join(ModelVersionRow, ModelVersionRow.id == OutlierRow.model_version_id), f)
    rows = session.execute(stmt.order_by(*order).limit(limit).offset(offset)).all()
    return [outlier_view(o, v) for o, v in rows]


class Reviews(SessionScope):
    """The review side of the store; sessions never leave this class."""

    def __init__(self, sessions: sessionmaker[Session], gate: WriteGate | None = None) -> None:
        super().__init__(sessions, gate)
        self.window_changes = 0    # bumped when this process adds or deletes a maintenance window

    def query(self, f: OutlierFilter, limit: int = 50, offset: int = 0, sort: SortKey = "ts",
              descending: bool = True) -> tuple[list[OutlierView], int]:
        """One page of outliers matching `f`, and how many match in all."""
        with self._read("query outliers") as session:
            total = int(session.scalar(_filtered(select(func.count()).select_from(OutlierRow), f)) or 0)
            views = outlier_page(session, f, limit, offset, sort, descending)
        return views, total

    def export_page(self, f: OutlierFilter, after: tuple[datetime, int] | None, limit: int) -> list[OutlierView]:
        """Up to `limit` outliers matching `f`, newest first (by ts, then id), after the keyset `after` (the
        (ts, id) of the last row of the previous page): a cursor that stays consistent while rows are added.
        With `f.detector` it reads the (detector, ts) index from the cursor on; without, it sorts the table."""
        stmt = _filtered(select(OutlierRow, ModelVersionRow.version)
                         .join(ModelVersionRow, ModelVersionRow.id == OutlierRow.model_version_id), f)
        if after is not None:
            ts, last_id = after          # (ts, id) < after, written so that an index range on ts serves it
            stmt = stmt.where(OutlierRow.ts <= ts, or_(OutlierRow.ts < ts, OutlierRow.id < last_id))
        with self._read("export outliers") as session:
            rows = session.execute(stmt.order_by(OutlierRow.ts.desc(), OutlierRow.id.desc()).limit(limit)).all()
        return [outlier_view(o, v) for o, v in rows]

    def detail(self, outlier_id: int, around: int = 30) -> OutlierDetail | None:
        """One outlier in full: its model version and training window, and the key's scores around it."""
        with self._read("read outlier") as session:
            row = session.execute(select(OutlierRow, ModelVersionRow)
                                  .join(ModelVersionRow, ModelVersionRow.id == OutlierRow.model_version_id)
                                  .where(OutlierRow.id == outlier_id)).first()
            if row is None:
                return None
            o, m = row
            same_key = and_(RecordRow.detector == o.detector, RecordRow.state == "scored",
                            RecordRow.key.is_(None) if o.key is None else RecordRow.key == o.key)
            columns = (RecordRow.id, RecordRow.ts, RecordRow.score, RecordRow.is_outlier)
            before = session.execute(select(*columns).where(same_key, RecordRow.ts <= o.ts)
                                     .order_by(RecordRow.ts.desc(), RecordRow.id.desc()).limit(around + 1)).all()
            after = session.execute(select(*columns).where(same_key, RecordRow.ts > o.ts)
                                    .order_by(RecordRow.ts.asc(), RecordRow.id.asc()).limit(around)).all()
        history = [{"record_id": r.id, "ts": r.ts.isoformat(), "score": r.score, "is_outlier": r.is_outlier}
                   for r in [*reversed(before), *after]]
        model = {"version": m.version, "status": m.status, "trained_at": m.created_at.isoformat(),
                 "threshold": m.threshold, "window_start": m.window_start.isoformat() if m.window_start else None,
                 "window_end": m.window_end.isoformat() if m.window_end else None, "window_records": m.n_records,
                 "threshold_method": (m.meta.get("threshold") or {}).get("method"),
                 "diversity": (m.meta.get("diversity") or {}).get("status"),
                 "diversity_problems": [c for c in (m.meta.get("diversity") or {}).get("checks", [])
                                        if c.get("status") != "ok"]}
        return OutlierDetail(outlier_view(o, m.version), o.review_note, o.reviewer, o.reviewed_at, model, history)

    def set_verdict(self, ids: Sequence[int], verdict: str, note: str | None,
                    reviewer: str | None) -> tuple[list[tuple[int, str]], list[int]]:
        """Record a verdict on outliers; returns the (id, detector) pairs updated and the ids not found.

        `unreviewed` takes a verdict back: reviewer and review time are cleared, and the note too unless one
        is given."""
        if verdict not in REVIEW_STATES:
            raise ValueError(f"verdict must be one of {REVIEW_STATES}, got {verdict!r}")
        check_text("store verdict", "note", note)
        check_text("store verdict", "reviewer", reviewer)
        wanted = sorted(set(ids))
        with self._tx("store verdict") as session:
            found = session.execute(select(OutlierRow.id, OutlierRow.detector)
                                    .where(OutlierRow.id.in_(wanted))).all()
            if found:
                cleared = verdict == "unreviewed"
                values: dict[str, Any] = {"review_state": verdict, "reviewer": None if cleared else reviewer,
                                          "reviewed_at": None if cleared else datetime.now(UTC)}
                if note is not None or cleared:  # a verdict without a note keeps the note already there
                    values["review_note"] = note
                session.execute(update(OutlierRow).where(OutlierRow.id.in_([i for i, _ in found])).values(**values))
        updated = [(int(i), str(d)) for i, d in found]
        present = {i for i, _ in updated}
        return updated, [i for i in wanted if i not in present]

    def verdict_counts(self) -> dict[tuple[str, str], int]:
        """Outliers by detector and review state."""
        with self._read("count verdicts") as session:
            rows = session.execute(select(OutlierRow.detector, OutlierRow.review_state, func.count())
                                   .group_by(OutlierRow.detector, OutlierRow.review_state)).all()
        return {(d, s): int(n) for d, s, n in rows}

    def reviewed_fields(self, detector: str, limit: int = 10_000) -> list[tuple[str, dict[str, Any], str | None]]:
        """(verdict, record fields, record key) of the newest reviewed outliers of a detector."""
        with self._read("read reviewed outliers") as session:
            rows = session.execute(select(OutlierRow.review_state, OutlierRow.fields, OutlierRow.key)
                                   .where(OutlierRow.detector == detector, OutlierRow.review_state.in_(VERDICTS))
                                   .order_by(OutlierRow.id.desc()).limit(limit)).all()
        return [(str(state), dict(fields), key) for state, fields, key in rows]

    # -- maintenance windows -------------------------------------------------------------------
    def add_window(self, detector: str, start: datetime, end: datetime, reason: str | None) -> MaintenanceWindow:
        if end <= start:
            raise ValueError("a maintenance window must end after it starts")
        check_text("add maintenance window", "reason", reason)
        with self._tx("add maintenance window") as session:
            row = MaintenanceWindowRow(detector=detector, start=start, end=end, reason=reason,
                                       created_at=datetime.now(UTC))
            session.add(row)
            session.flush()
            window = MaintenanceWindow(row.id, detector, start, end, reason, row.created_at)
        self.window_changes += 1
        return window

    def windows(self, detector: str, overlapping: tuple[datetime, datetime] | None = None) -> list[MaintenanceWindow]:
        stmt = select(MaintenanceWindowRow).where(MaintenanceWindowRow.detector == detector)
        if overlapping is not None:
            stmt = stmt.where(MaintenanceWindowRow.start <= overlapping[1], MaintenanceWindowRow.end > overlapping[0])
        with self._read("list maintenance windows") as session:
            return [MaintenanceWindow(r.id, r.detector, r.start, r.end, r.reason, r.created_at)
                    for r in session.scalars(stmt.order_by(MaintenanceWindowRow.start))]

    def delete_window(self, detector: str, window_id: int) -> bool:
        with self._tx("delete maintenance window") as session:
            result = session.execute(delete(MaintenanceWindowRow).where(
                MaintenanceWindowRow.id == window_id, MaintenanceWindowRow.detector == detector))
            deleted = bool(result.rowcount)  # type: ignore[attr-defined]
        self.window_changes += 1
        return deleted


