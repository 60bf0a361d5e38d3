"""The store's hot paths written for the driver itself: batched inserts, claims and score updates.

SQLAlchemy's ORM bulk paths convert every value in Python, row by row. Here each batch is one
driver call: multi-row INSERTs on SQLite, binary `COPY` and array parameters on PostgreSQL. Values are written
exactly as the table types write them (SQLite: naive UTC text with microseconds, JSON text;
PostgreSQL: timestamptz, jsonb), so rows written here read back through the ORM unchanged.
"""

from __future__ import annotations

import functools
import itertools
import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session

from detector import fastjson
from detector.records import ValidRecord
from detector.store.types import IngestScores, ScoredRecord

__all__ = ["ClaimedRow", "claim_pending", "copy_outliers", "insert_records", "insert_scored_records", "mark_scored",
           "sqlite_rows"]

logger = logging.getLogger(__name__)

ClaimedRow = tuple[int, datetime, str | None, dict[str, Any]]   # id, ts, key, fields

_INSERT_COLUMNS = "detector, ts, key, fields, source, ingested_at, state, is_outlier"
_SQLITE_INSERT = f"INSERT INTO records ({_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0)"
# Multi-row INSERTs on SQLite: sqlite3's executemany lets go of the GIL around every row's step and must win it
# back before the next one, which, while another thread runs Python (the next request's parsing and
# validation), can take the whole switch interval (5 ms) per row. One statement of many rows lets go once.
_SQLITE_ROWS = 512        # rows per statement at most (then halves, down to 1: each text prepared once, cached)
# COPY in binary: psycopg then dumps each value with the type given, without working out a text form per
# value. The COPY of a scored row alone took 7 us of the daemon's time instead of 22, and the whole scored
# insert about 10 us instead of 18. The types are the columns', in order.
_PG_COPY = f"COPY records ({_INSERT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_PG_INSERT_TYPES = ("text", "timestamptz", "text", "jsonb", "text", "timestamptz", "text", "bool")
_PG_SCORED_TYPES = (*_PG_INSERT_TYPES, "float8", "int8", "timestamptz", "jsonb")
_PG_SCORED_ID_TYPES = ("int8", *_PG_SCORED_TYPES)
_SCORED_COLUMNS = f"{_INSERT_COLUMNS}, score, model_version_id, scored_at, ood"
_SQLITE_INSERT_SCORED = (f"INSERT INTO records ({_SCORED_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, 'scored', ?, ?, ?, ?, ?)")
# A scored batch is copied straight into records; when a record in it is flagged, the ids of the whole batch are
# drawn first from the table's sequence in one query (in batch order) and copied with the rows. An earlier
# version copied only the per-row values into a staging table and added the batch's constants by INSERT ...
# SELECT: the server spent more per row (38-52 us against 35-48), and in binary the constants cost the daemon
# little to send.
_PG_COPY_SCORED = f"COPY records ({_SCORED_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_PG_COPY_SCORED_IDS = f"COPY records (id, {_SCORED_COLUMNS}) FROM STDIN (FORMAT BINARY)"
# A scored batch's outliers (on PostgreSQL) in one binary COPY too: through the ORM's bulk insert, the ten or
# so of a 1,000-record batch held the GIL about a fifth as long as the COPY of all its records.
_OUTLIER_COLUMNS = ("record_id", "detector", "ts", "key", "fields", "score", "threshold", "model_version_id",
                    "contributions", "expected", "review_state", "created_at", "ood")
_PG_COPY_OUTLIERS = f"COPY outliers ({', '.join(_OUTLIER_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_PG_OUTLIER_TYPES = ("int8", "text", "timestamptz", "text", "jsonb", "float8", "float8", "int8", "jsonb", "jsonb",
                     "text", "timestamptz", "jsonb")
# key in the driver connection's info: the records id sequence, looked up once per connection
_SEQUENCE = "vigil_records_id_sequence"
_PG_SEQUENCE = "SELECT pg_get_serial_sequence('records', 'id')"
# one array of new ids: one value to load instead of a row per id
_PG_NEW_IDS = "SELECT array_agg(nextval(%s::regclass)) FROM generate_series(1, %s)"
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
    if value.tzinfo is UTC:           # the common case, in one call: "YYYY-MM-DD HH:MM:SS.ffffff+00:00" cut
        return value.isoformat(" ", "microseconds")[:26]
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


def _flags_and_notes(n: int, scored: IngestScores) -> tuple[list[bool], list[dict[str, Any] | None]]:
    """Per record of a scored batch of n: whether it is flagged, and its out-of-distribution note."""
    flags = [False] * n
    for i in scored.outliers:
        flags[i] = True
    return flags, [scored.ood.get(i) for i in range(n)] if scored.ood else [None] * n


def sqlite_rows(detector: str, source: str, records: Sequence[ValidRecord], now: datetime,
                scored: IngestScores | None = None) -> list[tuple[Any, ...]]:
    """The SQLite parameter rows of a batch's accepted records (pending, or scored with `scored`), formatted
    ahead of the transaction: the daemon builds them before it queues for the one SQLite writer, so that
    the writer holds the database only for the driver's own work. StatementError for a value the table
    type refuses (a naive time)."""
    statement = _SQLITE_INSERT if scored is None else _SQLITE_INSERT_SCORED
    with _statement(statement):
        ingested = _sqlite_time(now)
        if scored is None:
            return [(detector, _sqlite_time(r.ts), r.key, fastjson.dumps(r.fields), source, ingested) for r in records]
        flags, ood = _flags_and_notes(len(records), scored)
        version = scored.model_version_id
        return [(detector, _sqlite_time(r.ts), r.key, fastjson.dumps(r.fields), source, ingested, flag, score,
                 version, ingested, None if note is None else fastjson.dumps(note))
                for r, flag, score, note in zip(records, flags, scored.scores, ood, strict=True)]


@functools.lru_cache(maxsize=64)
def _sqlite_many(statement: str, n_rows: int) -> str:
    """`statement` (an INSERT ... VALUES (...) of one row) for `n_rows` rows."""
    head, _, values = statement.partition(" VALUES ")
    return f"{head} VALUES {', '.join([values] * n_rows)}"


def _sqlite_insert(cursor: Any, statement: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `rows` with `statement` (one row's INSERT) as multi-row statements of _SQLITE_ROWS rows at most,
    in order (and within SQLite's limit on parameters per statement)."""
    if not rows:
        return
    limit = cursor.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    size = max(1, min(_SQLITE_ROWS, limit // len(rows[0])))
    at = 0
    while at < len(rows):
        while size > len(rows) - at:
            size //= 2
        cursor.execute(_sqlite_many(statement, size), list(itertools.chain.from_iterable(rows[at : at + size])))
        at += size


def insert_records(session: Session, detector: str, source: str, records: Sequence[ValidRecord],
                   now: datetime, rows: list[tuple[Any, ...]] | None = None) -> None:
    """Insert accepted records as pending, in the session's transaction, with multi-row statements (on
    SQLite of `rows`, when given: `sqlite_rows` of the same records) or one COPY."""
    if _is_sqlite(session):
        if rows is None:
            rows = sqlite_rows(detector, source, records, now)
        with _sqlite_cursor(session, _SQLITE_INSERT) as cursor:
            _sqlite_insert(cursor, _SQLITE_INSERT, rows)
        return
    _copy_records(session, [(detector, r.ts, r.key, r.fields, source) for r in records], now)


def _copy_records(session: Session, rows: list[tuple[str, datetime, str | None, dict[str, Any], str]],
                  now: datetime) -> None:
    from psycopg.types.json import Jsonb

    with _statement(_PG_COPY):
        now = _utc(now)
        values = [(detector, _utc(ts), key, Jsonb(fields, fastjson.dumps_bytes), source, now, "pending", False)
                  for detector, ts, key, fields, source in rows]
    _copy(session, _PG_COPY, values, _PG_INSERT_TYPES)


def _driver(session: Session) -> tuple[Connection, Any]:
    """The session's connection and the driver's own connection under it."""
    connection = session.connection()
    driver = connection.connection.driver_connection
    if driver is None:
        raise RuntimeError("the session's connection has no driver connection")
    return connection, driver


@contextmanager
def _sqlite_cursor(session: Session, statement: str) -> Iterator[Any]:
    """A cursor of the session's own sqlite3 connection (in its transaction); driver errors raised as
    SQLAlchemy raises them."""
    _, driver = _driver(session)
    cursor = driver.cursor()
    try:
        yield cursor
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc
    except (ValueError, OverflowError, TypeError) as exc:   # a value sqlite3 cannot bind
        raise StatementError(f"({type(exc).__name__}) {exc}", statement, None, exc) from exc
    finally:
        cursor.close()


def _copy(session: Session, statement: str, rows: Sequence[tuple[Any, ...]], types: Sequence[str]) -> None:
    """COPY `rows` (binary, of the column `types` given) on the session's connection; failures raised as
    SQLAlchemy raises them."""
    import psycopg

    connection, driver = _driver(session)
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:
        if driver.broken:
            connection.invalidate(exc)
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
    except (ValueError, OverflowError, TypeError) as exc:   # a value psycopg cannot dump
        raise StatementError(f"({type(exc).__name__}) {exc}", statement, None, exc) from exc


def insert_scored_records(session: Session, detector: str, source: str, records: Sequence[ValidRecord],
                          scored: IngestScores, now: datetime, rows: list[tuple[Any, ...]] | None = None,
                          ) -> dict[int, int]:
    """Insert accepted records already scored (state `scored`), in the session's transaction; returns the
    new id of each flagged record (by its index in `records`), for its outlier row.

    SQLite: multi-row INSERTs for each run of unflagged records and one INSERT per flagged record (its
    id is the cursor's lastrowid), in batch order, of `rows` when given (`sqlite_rows` of the same
    records and scores). PostgreSQL: one COPY into records; when a record is flagged the batch's ids
    are first drawn from the table's sequence in one query and copied with the rows.
    """
    flagged = sorted(scored.outliers)
    if _is_sqlite(session):
        if rows is None:
            rows = sqlite_rows(detector, source, records, now, scored)
        ids: dict[int, int] = {}
        with _sqlite_cursor(session, _SQLITE_INSERT_SCORED) as cursor:
            start = 0
            for i in flagged:       # the driver's own calls: SQLAlchemy's per-statement overhead, 30 times a batch
                _sqlite_insert(cursor, _SQLITE_INSERT_SCORED, rows[start:i])
                cursor.execute(_SQLITE_INSERT_SCORED, rows[i])
                ids[i] = int(cursor.lastrowid or 0)
                start = i + 1
            _sqlite_insert(cursor, _SQLITE_INSERT_SCORED, rows[start:])
        return ids
    from psycopg.types.json import Jsonb

    flags, ood = _flags_and_notes(len(records), scored)
    version = scored.model_version_id
    drawn: list[int] = []
    if flagged:
        connection = session.connection()
        info = connection.connection.info          # lives as long as the database connection
        sequence = info.get(_SEQUENCE)
        if not sequence:
            sequence = info[_SEQUENCE] = str(connection.exec_driver_sql(_PG_SEQUENCE).scalar_one())
        drawn = list(connection.exec_driver_sql(_PG_NEW_IDS, (sequence, len(records))).scalar_one())
    statement, types = (_PG_COPY_SCORED_IDS, _PG_SCORED_ID_TYPES) if drawn else (_PG_COPY_SCORED, _PG_SCORED_TYPES)
    with _statement(statement):
        now = _utc(now)
        dump = fastjson.dumps_bytes
        per_row = ((detector, r.ts if r.ts.tzinfo is UTC else _utc(r.ts), r.key, Jsonb(r.fields, dump), source, now,
                  "scored", flag, score, version, now, None if note is None else Jsonb(note, dump))
                 for r, flag, score, note in zip(records, flags, scored.scores, ood, strict=True))
        values = [(new_id, *row) for new_id, row in zip(drawn, per_row, strict=True)] if drawn else list(per_row)
    _copy(session, statement, values, types)
    return {i: drawn[i] for i in flagged}


def copy_outliers(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """PostgreSQL: insert outliers-table rows (dicts of `_OUTLIER_COLUMNS`, as the ORM takes them) in one
    binary COPY, in the session's transaction; JSON values as the ORM stores them (None in `ood` as NULL)."""
    from psycopg.types.json import Jsonb

    dump = fastjson.dumps_bytes
    with _statement(_PG_COPY_OUTLIERS):
        values = [(r["record_id"], r["detector"], _utc(r["ts"]), r["key"], Jsonb(r["fields"], dump), r["score"],
                   r["threshold"], r["model_version_id"], Jsonb(r["contributions"], dump), Jsonb(r["expected"], dump),
                   r["review_state"], _utc(r["created_at"]), None if r["ood"] is None else Jsonb(r["ood"], dump))
                  for r in rows]
    _copy(session, _PG_COPY_OUTLIERS, values, _PG_OUTLIER_TYPES)


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
    if not scored:
        return
    ids, scores, outliers, notes, _ = zip(*scored, strict=True)    # the columns, transposed at C speed
    flags = [outlier is not None for outlier in outliers]
    ood = [None if note is None else fastjson.dumps(note) for note in notes]
    if _is_sqlite(session):
        with _statement(_SQLITE_SCORED):
            when = _sqlite_time(now)
        n = len(scored)
        rows = list(zip(scores, flags, itertools.repeat(model_version_id, n), itertools.repeat(when, n), ood, ids,
                        strict=True))
        session.connection().exec_driver_sql(_SQLITE_SCORED, rows)
        return
    session.connection().exec_driver_sql(_PG_SCORED, (model_version_id, now, list(ids), list(scores), flags, ood))
