"""The store's hot paths written for the driver itself: batched inserts, claims and score updates.

SQLAlchemy's ORM bulk paths convert every value in Python, row by row. Here each batch is one
driver call: `executemany` on SQLite, `COPY` and array parameters on PostgreSQL. Values are written
exactly as the table types write them (SQLite: naive UTC text with microseconds, JSON text;
PostgreSQL: timestamptz, jsonb), so rows written here read back through the ORM unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session

from detector import fastjson

if TYPE_CHECKING:
    from detector.records import ValidRecord
    from detector.store.repository import ScoredRecord

__all__ = ["ClaimedRow", "claim_pending", "insert_records", "mark_scored"]

logger = logging.getLogger(__name__)

ClaimedRow = tuple[int, datetime, str | None, dict[str, Any]]   # id, ts, key, fields

_INSERT_COLUMNS = "detector, ts, key, fields, source, ingested_at, state, is_outlier"
_SQLITE_INSERT = f"INSERT INTO records ({_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0)"
_PG_COPY = f"COPY records ({_INSERT_COLUMNS}) FROM STDIN"
_SQLITE_CLAIM = ("SELECT id, ts, key, fields FROM records WHERE detector = ? AND state = 'pending' "
                 "ORDER BY id LIMIT ?")
_PG_CLAIM = ("SELECT id, ts, key, fields::text FROM records WHERE detector = %s AND state = 'pending' "
             "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED")
_SQLITE_SCORED = ("UPDATE records SET state = 'scored', score = ?, is_outlier = ?, model_version_id = ?, "
                  "scored_at = ?, ood = ? WHERE id = ?")
_PG_SCORED = (
    "UPDATE records SET state = 'scored', score = u.score, is_outlier = u.is_outlier, model_version_id = %s, "
    "scored_at = %s, ood = u.ood::jsonb "
    "FROM unnest(%s::bigint[], %s::float8[], %s::boolean[], %s::text[]) AS u(id, score, is_outlier, ood) "
    "WHERE records.id = u.id"
)


def _utc(value: datetime) -> datetime:
    """`value` in UTC; ValueError for a naive time, as the table type raises (OverflowError past year 9999)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store; use timezone-aware UTC")
    return value.astimezone(UTC)


def _sqlite_time(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DATETIME stores for a UTC time (always with microseconds)."""
    return _utc(value).replace(tzinfo=None).isoformat(" ", timespec="microseconds")


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


@contextmanager
def _statement(statement: str) -> Iterator[None]:
    """Raise what SQLAlchemy raises for the same failure: a value the table type refuses becomes a
    StatementError, a driver error a DBAPIError (so callers map them as they map the ORM's)."""
    try:
        yield
    except (ValueError, OverflowError, TypeError) as exc:
        raise StatementError(f"({type(exc).__name__}) {exc}", statement, None, exc) from exc


def insert_records(session: Session, detector: str, source: str, records: Sequence[ValidRecord],
                   now: datetime) -> None:
    """Insert accepted records as pending, in the session's transaction, with one driver call."""
    if _is_sqlite(session):
        with _statement(_SQLITE_INSERT):
            ingested = _sqlite_time(now)
            rows = [(detector, _sqlite_time(r.ts), r.key, fastjson.dumps(r.fields), source, ingested) for r in records]
        session.connection().exec_driver_sql(_SQLITE_INSERT, rows)
        return
    _copy_records(session, [(detector, r.ts, r.key, r.fields, source) for r in records], now)


def _copy_records(session: Session, rows: list[tuple[str, datetime, str | None, dict[str, Any], str]],
                  now: datetime) -> None:
    import psycopg
    from psycopg.types.json import Jsonb

    connection = session.connection()
    driver = connection.connection.driver_connection
    if driver is None:
        raise RuntimeError("the session's connection has no driver connection")
    with _statement(_PG_COPY):
        now = _utc(now)
        rows = [(detector, _utc(ts), key, fields, source) for detector, ts, key, fields, source in rows]
    try:
        with driver.cursor() as cursor, cursor.copy(_PG_COPY) as copy:
            for detector, ts, key, fields, source in rows:
                copy.write_row((detector, ts, key, Jsonb(fields, fastjson.dumps_bytes), source, now, "pending", False))
    except psycopg.Error as exc:
        if driver.broken:
            connection.invalidate(exc)
        raise DBAPIError.instance(_PG_COPY, None, exc, psycopg.Error) from exc
    except (ValueError, OverflowError, TypeError) as exc:   # a value psycopg cannot dump
        raise StatementError(f"({type(exc).__name__}) {exc}", _PG_COPY, None, exc) from exc


def claim_pending(session: Session, detector: str, limit: int) -> list[ClaimedRow]:
    """The oldest `limit` pending records of `detector`, locked for this transaction on PostgreSQL
    (rows other instances hold are skipped)."""
    sqlite = _is_sqlite(session)
    rows = session.connection().exec_driver_sql(_SQLITE_CLAIM if sqlite else _PG_CLAIM, (detector, limit)).all()
    if not rows:
        return []
    ids, times, keys, texts = zip(*rows, strict=True)
    fields = fastjson.loads("[" + ",".join(texts) + "]")    # one parse for the batch: no per-row call overhead
    if sqlite:
        stamps = [datetime.fromisoformat(ts).replace(tzinfo=UTC) for ts in times]
    else:
        stamps = [ts.astimezone(UTC) for ts in times]
    return list(zip(ids, stamps, keys, fields, strict=True))


def mark_scored(session: Session, scored: Sequence[ScoredRecord], model_version_id: int, now: datetime) -> None:
    """Store scores, outlier flags and out-of-distribution notes, and move the records to `scored`."""
    ood = [None if s.ood is None else fastjson.dumps(s.ood) for s in scored]
    if _is_sqlite(session):
        with _statement(_SQLITE_SCORED):
            when = _sqlite_time(now)
        rows = [(s.score, s.outlier is not None, model_version_id, when, note, s.id)
                for s, note in zip(scored, ood, strict=True)]
        session.connection().exec_driver_sql(_SQLITE_SCORED, rows)
        return
    session.connection().exec_driver_sql(_PG_SCORED, (
        model_version_id, now, [s.id for s in scored], [s.score for s in scored],
        [s.outlier is not None for s in scored], ood))
