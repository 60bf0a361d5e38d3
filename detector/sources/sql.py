"""The SQL source: rows of a table or query of any SQLAlchemy database, read in order of an increasing column."""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from detector.config.base import parse_duration
from detector.config.sources import SqlSourceConfig
from detector.errors import SourceError
from detector.sources.base import Sink

__all__ = ["SqlSource", "decode_position", "encode_position", "initial_position", "row_record"]

logger = logging.getLogger(__name__)

_WATERMARK = "sql"
_ORIGIN_LIMIT = 512                     # rejects.origin is a VARCHAR(512)
# A colon-name in the user's query would be taken for a bind parameter by sqlalchemy.text():
# the same pattern as SQLAlchemy's, so that the query reaches the database verbatim.
_BIND_LIKE = re.compile(r"(?<![:\w\\]):(\w+)(?!:)", re.UNICODE)


def encode_position(value: Any) -> str:
    """The watermark text of an order-column value: JSON with its type, so it binds back as the same type."""
    kind: str
    text: int | float | str
    if isinstance(value, bool):
        raise TypeError("a boolean column cannot be the order column")
    if isinstance(value, int):
        kind, text = "int", value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"order value {value} is not finite")
        kind, text = "float", value
    elif isinstance(value, Decimal):
        kind, text = "decimal", str(value)
    elif isinstance(value, datetime):
        kind, text = "datetime", value.isoformat()
    elif isinstance(value, date):
        kind, text = "date", value.isoformat()
    elif isinstance(value, str):
        kind, text = "str", value
    else:
        raise TypeError(f"order values of type {type(value).__name__} are not supported "
                        "(use a timestamp, date, number or text column)")
    return json.dumps({"type": kind, "value": text})


def decode_position(text: str) -> Any:
    """The order-column value a watermark holds (the inverse of `encode_position`)."""
    doc = json.loads(text)
    kind, value = doc["type"], doc["value"]
    decoders: dict[str, Callable[[Any], Any]] = {
        "int": int, "float": float, "decimal": Decimal, "datetime": datetime.fromisoformat,
        "date": date.fromisoformat, "str": str,
    }
    return decoders[kind](value)


def initial_position(initial: datetime | int | str | None, now: datetime) -> Any:
    """Where the first poll starts: None (the beginning), an integer, or a UTC time."""
    if initial is None or isinstance(initial, int):
        return initial
    if isinstance(initial, str):
        try:
            return now - timedelta(seconds=parse_duration(initial))
        except ValueError:
            initial = datetime.fromisoformat(initial.strip().replace("Z", "+00:00"))
    return initial.replace(tzinfo=UTC) if initial.tzinfo is None else initial.astimezone(UTC)


def _field_value(value: Any) -> Any:
    """A column value as a record value (bytes are handled by the caller)."""
    if value is None or isinstance(value, bool | int | float | str | datetime):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def row_record(keys: Sequence[str], row: Sequence[Any], skip: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One row as a record: every column a field; binary columns are left out (`skip` is told)."""
    record: dict[str, Any] = {}
    for key, value in zip(keys, row, strict=True):
        if isinstance(value, bytes | bytearray | memoryview):
            if skip is not None:
                skip(key)
            continue
        record[key] = _field_value(value)
    return record


def _engine(cfg: SqlSourceConfig) -> Engine:
    """One engine per source: pre-ping (a restarted database is reconnected), driver timeouts where known."""
    url = make_url(cfg.url)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2"):
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = max(2, math.ceil(cfg.timeout))
        options = f"-c statement_timeout={math.ceil(cfg.timeout * 1000)} -c TimeZone=UTC"
        given = url.query.get("options")
        if given:
            options = f"{given if isinstance(given, str) else ' '.join(given)} {options}"
        connect_args["options"] = options
    elif url.get_backend_name() == "sqlite" and "timeout" not in url.query:
        connect_args["timeout"] = cfg.timeout
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _problem(exc: BaseException) -> str:
    """The database's own words for an error, on one line, without SQLAlchemy's statement and link."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = " ".join(str(cause).split()) or cause.__class__.__name__
    return f"{cause.__class__.__name__}: {text[:500]}"


class SqlSource:
    """Polls a table or query for rows whose `order_column` is past the stored watermark.

    Each batch (at most `batch_size` rows, in order) is stored in one transaction together with
    the last order value, so a restart or an outage leaves no gap and no duplicate. When the row
    after a full batch has the batch's last order value, the batch's rows with that value are left
    for the next batch (`order_column > watermark` would skip the rest of them); when all rows
    of the batch share one value, every row with that value is read, even past `batch_size`.
    A poll reads at most `max_batches` batches.
    """

    def __init__(self, cfg: SqlSourceConfig, sink: Sink, clock: Callable[[], datetime] | None = None) -> None:
        self.detector = sink.detector
        self.poll_interval_s = cfg.poll_interval
        self._cfg = cfg
        self._sink = sink
        self._clock = clock or (lambda: datetime.now(UTC))
        url = make_url(cfg.url)
        self.display_url = url.render_as_string(hide_password=True)
        self._sqlite_file = (Path(url.database) if url.get_backend_name() == "sqlite" and url.database
                             and url.database != ":memory:" and not url.database.startswith("file:") else None)
        self._engine = _engine(cfg)
        column: sa.ColumnClause[Any] = sa.column(cfg.order_column)
        self._from: sa.TableClause | sa.Subquery
        if cfg.table is not None:
            schema, _, name = cfg.table.rpartition(".")
            self._from = sa.table(name, column, schema=schema or None)
            self._what = cfg.table
        else:
            assert cfg.query is not None
            verbatim = _BIND_LIKE.sub(lambda m: "\\:" + m.group(1), cfg.query)
            self._from = sa.text(verbatim).columns(column).subquery("vigil_src")
            self._what = "query"
        self._order = self._from.c[cfg.order_column]
        self._skipped: set[str] = set()

    def close(self) -> None:
        """Close the source database's pooled connections."""
        self._engine.dispose()

    def _skip_column(self, column: str) -> None:
        if column not in self._skipped:
            self._skipped.add(column)
            logger.warning("binary column left out of the records",
                           extra={"detector": self.detector, "column": column})

    def _statement(self, op: str, value: Any, limit: int | None) -> sa.Select[Any]:
        stmt: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(self._from)
        if op == "first":
            stmt = stmt.where(self._order.is_not(None))
        elif op == ">":
            stmt = stmt.where(self._order > sa.bindparam("after", value))
        elif op == ">=":
            stmt = stmt.where(self._order >= sa.bindparam("after", value))
        else:
            stmt = stmt.where(self._order == sa.bindparam("after", value))
        stmt = stmt.order_by(self._order)
        return stmt.limit(limit) if limit is not None else stmt

    def _fetch(self, op: str, value: Any) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """The next batch: column names, rows, and whether the table may hold more now."""
        limit = self._cfg.batch_size
        if self._sqlite_file is not None and not self._sqlite_file.is_file():
            raise SourceError("sql", f"SQL source {self.display_url}: database file {self._sqlite_file} not found")
        try:
            with self._engine.connect() as conn:
                # one row past the batch tells whether the batch would end inside a run of equal values
                result = conn.execute(self._statement(op, value, limit + 1))
                keys = list(result.keys())
                rows = [tuple(row) for row in result]
                at = self._order_index(keys)
                if len(rows) <= limit:
                    return keys, rows, False
                peek, rows = rows[limit], rows[:limit]
                last = rows[-1][at]
                if peek[at] != last:
                    return keys, rows, True
                cut = len(rows)
                while cut > 0 and rows[cut - 1][at] == last:
                    cut -= 1
                if cut > 0:        # leave the rows sharing the last value for the next batch, whole
                    return keys, rows[:cut], True
                # every row of the batch has one value: read all rows with it (there may be more)
                result = conn.execute(self._statement("=", last, None))
                return keys, [tuple(row) for row in result], True
        except (SQLAlchemyError, OSError) as exc:
            raise SourceError("sql", f"SQL source {self.display_url} ({self._what}): cannot read: "
                                     f"{_problem(exc)}") from exc

    def _order_index(self, keys: list[str]) -> int:
        name = self._cfg.order_column
        if name in keys:
            return keys.index(name)
        folded = [k.lower() for k in keys]
        if name.lower() in folded:
            return folded.index(name.lower())
        raise SourceError("sql", f"SQL source {self.display_url} ({self._what}): order column {name!r} "
                                 f"is not among the result columns {keys}")

    def _start(self) -> tuple[str, Any]:
        mark = self._sink.watermark(_WATERMARK)
        if mark is not None:
            return ">", decode_position(mark)
        initial = initial_position(self._cfg.initial, self._clock())
        return ("first", None) if initial is None else (">=", initial)

    def poll(self) -> int:
        cfg = self._cfg
        op, after = self._start()
        accepted = rejected = 0
        for _ in range(cfg.max_batches):
            if self._sink.stopping():
                break
            keys, rows, more = self._fetch(op, after)
            if not rows:
                break
            at = self._order_index(keys)
            last = rows[-1][at]
            try:
                position = encode_position(last)
            except TypeError as exc:
                raise SourceError("sql", f"SQL source {self.display_url} ({self._what}): order column "
                                         f"{cfg.order_column!r}: {exc}") from None
            records = [row_record(keys, row, self._skip_column) for row in rows]
            origin = f"{self._what} {cfg.order_column} {rows[0][at]!s}..{last!s}"[:_ORIGIN_LIMIT]
            result = self._sink.ingest(records, origin=origin, watermark=(_WATERMARK, position))
            accepted += result.accepted
            rejected += len(result.rejected)
            op, after = ">", last
            if not more:
                break
        if accepted or rejected:
            logger.info("sql rows read", extra={"detector": self.detector, "records": accepted,
                                                "rejected": rejected, "until": str(after)})
        return accepted
