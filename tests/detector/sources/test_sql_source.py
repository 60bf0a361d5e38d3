"""The SQL source against real SQLite and PostgreSQL source databases (the Vigil store stays on SQLite)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from detector.config import SqlSourceConfig, load_config
from detector.daemon import Runtime, build_runtime
from detector.errors import ConfigError, SourceError
from detector.sources.sql import SqlSource, decode_position, encode_position
from tests.pg import ADMIN_URL, fresh_database, require_postgres
from tests.support.net import free_port

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = datetime(2025, 3, 3, tzinfo=UTC)

metadata = sa.MetaData()
METRICS = sa.Table(
    "metrics", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.DateTime(timezone=True)),
    sa.Column("tick", sa.Integer),
    sa.Column("host", sa.String(20)),
    # NUMERIC on PostgreSQL (read as Decimal); SQLite has no decimal type
    sa.Column("load", sa.Numeric(10, 3).with_variant(sa.Float(), "sqlite")),
    sa.Column("region", sa.String(10)),
    sa.Column("payload", sa.LargeBinary),
)
HOSTS = sa.Table(
    "hosts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(20)),
    sa.Column("region", sa.String(10)),
)


@dataclass
class SourceDb:
    """A source database the tests write to, through its own engine."""

    url: str
    kind: str
    engine: sa.Engine

    def insert(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(table), rows)

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)


@pytest.fixture(params=["sqlite", "postgresql"])
def source_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SourceDb]:
    """An empty source database with the test tables: a SQLite file, and a throw-away PostgreSQL database."""

    def opened(url: str) -> Iterator[SourceDb]:
        engine = sa.create_engine(url)
        metadata.create_all(engine)
        try:
            yield SourceDb(url, request.param, engine)
        finally:
            engine.dispose()

    if request.param == "sqlite":
        yield from opened(f"sqlite:///{tmp_path / 'source.db'}")
        return
    require_postgres()
    with fresh_database() as url:
        yield from opened(url)


def metric_rows(ids: range, **overrides: Any) -> list[dict[str, Any]]:
    return [{"id": i, "ts": T0 + timedelta(minutes=i), "tick": i, "host": f"web-{i % 3}", "load": 10 + i * 0.5,
             "region": ("eu", "us")[i % 2], "payload": b"\x00\x01", **overrides} for i in ids]


DETECTOR = """
[detectors.db]
key_field = "host"

[detectors.db.source]
type = "sql"
url = "{url}"
{source}

[detectors.db.features]
{features}
"""
FEATURES = 'load = "numeric"\nregion = "categorical"'


@pytest.fixture
def make_runtime(write_config: Callable[[str], Path]) -> Iterator[Callable[..., tuple[Runtime, SqlSource]]]:
    """Build a runtime (store: SQLite in tmp_path) whose one detector `db` reads the given SQL source."""
    opened: list[tuple[Runtime, SqlSource]] = []

    def make(url: str, source: str, features: str = FEATURES) -> tuple[Runtime, SqlSource]:
        body = DETECTOR.format(url=url, source=source, features=features)
        runtime = build_runtime(load_config(write_config(body)), CollectorRegistry(), with_process_metrics=False)
        [sql_source] = runtime.sources
        assert isinstance(sql_source, SqlSource)
        opened.append((runtime, sql_source))
        return runtime, sql_source

    yield make
    for runtime, sql_source in opened:
        sql_source.close()
        runtime.vigil.repo.dispose()


def stored(runtime: Runtime) -> list[dict[str, Any]]:
    """The fields of every stored record of `db`, in the order they were stored."""
    records = runtime.vigil.repo.training_window("db", EPOCH, 1_000_000)
    return [r.fields for r in sorted(records, key=lambda r: r.id)]


def watermark(runtime: Runtime) -> Any:
    mark = runtime.vigil.repo.watermark("db", "sql")
    return None if mark is None else decode_position(mark)


def drain(source: SqlSource, polls: int = 50) -> list[int]:
    """Poll until a poll reads nothing; the records accepted by each poll that read some."""
    counts = []
    for _ in range(polls):
        n = source.poll()
        if n == 0:
            return counts
        counts.append(n)
    raise AssertionError("the source never caught up")


def test_table_rows_ingested_once_in_order_over_several_polls(
        source_db: SourceDb, make_runtime: Callable[..., tuple[Runtime, SqlSource]],
        caplog: pytest.LogCaptureFixture) -> None:
    source_db.insert(METRICS, metric_rows(range(1, 11)))
    runtime, source = make_runtime(source_db.url, 'table = "metrics"\norder_column = "id"\nbatch_size = 3\n'
                                                  'max_batches = 2')
    with caplog.at_level(logging.WARNING, logger="detector.sources.sql"):
        assert drain(source) == [6, 4]          # two batches of 3 per poll, then the last 4
    assert watermark(runtime) == 10

    source_db.insert(METRICS, metric_rows(range(11, 16)))
    assert drain(source) == [5]
    records = stored(runtime)
    ids = [r["id"] for r in records]
    assert ids == list(range(1, 16))            # in order, each once
    assert len(set(ids)) == len(records) == 15
    first = records[0]
    assert first["load"] == pytest.approx(10.5) and isinstance(first["load"], float)   # NUMERIC -> float
    assert first["region"] == "us" and "payload" not in first                          # binary left out
    assert "host" not in first and "ts" not in first                                   # became key and time
    kept = runtime.vigil.repo.training_window("db", EPOCH, 100)
    assert {r.key for r in kept} == {"web-0", "web-1", "web-2"}
    assert min(r.ts for r in kept) == T0 + timedelta(minutes=1)
    warnings = [r for r in caplog.records if r.getMessage() == "binary column left out of the records"]
    assert len(warnings) == 1                   # once per column, not per row or poll


def test_query_source_with_where_join_and_computed_column(
        source_db: SourceDb, make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    source_db.insert(HOSTS, [{"id": 1, "name": "web-1", "region": "eu"}, {"id": 2, "name": "web-2", "region": "us"},
                             {"id": 3, "name": "db:x", "region": "test"}])
    source_db.insert(METRICS, [{**row, "host": str(1 + row["id"] % 3)} for row in metric_rows(range(1, 13))])
    query = ("SELECT m.id, m.ts, h.name AS host, h.region, m.load * 2 AS load2 "
             "FROM metrics m JOIN hosts h ON CAST(m.host AS INTEGER) = h.id "
             "WHERE h.region <> 'test' AND h.name LIKE 'web%' AND h.name <> 'a:b';")
    runtime, source = make_runtime(
        source_db.url, f'query = "{query}"\norder_column = "id"\nbatch_size = 5',
        features='load2 = "numeric"\nregion = "categorical"')
    assert sum(drain(source)) == 8              # host 3 ('test') is filtered out
    records = stored(runtime)
    assert [r["id"] for r in records] == [i for i in range(1, 13) if i % 3 != 2]
    assert all(r["load2"] == pytest.approx(2 * (10 + r["id"] * 0.5)) for r in records)
    assert {r["region"] for r in records} == {"eu", "us"}


def test_timestamp_order_column_with_initial_duration(
        source_db: SourceDb, make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    rows = metric_rows(range(1, 31))
    for i, row in enumerate(rows):              # one row every 8 hours, 10 days back to 8 hours ago
        row["ts"] = now - timedelta(hours=8 * (30 - i))
    source_db.insert(METRICS, rows)
    runtime, source = make_runtime(source_db.url, 'table = "metrics"\norder_column = "ts"\nbatch_size = 4\n'
                                                  'initial = "7d"')
    drain(source)
    recent = [r["id"] for r in rows if r["ts"] > now - timedelta(days=7)]
    assert [r["id"] for r in stored(runtime)] == recent
    assert len(recent) == 20
    newest = runtime.vigil.repo.training_window("db", EPOCH, 1)[0]
    assert newest.ts == now - timedelta(hours=8)     # the order column doubles as the record time
    kind = json.loads(runtime.vigil.repo.watermark("db", "sql") or "{}")["type"]
    assert kind == ("str" if source_db.kind == "sqlite" else "datetime")   # SQLite keeps times as text

    source_db.insert(METRICS, [{**metric_rows(range(99, 100))[0], "ts": now + timedelta(seconds=1)}])
    assert drain(source) == [1]
    assert [r["id"] for r in stored(runtime)] == [*recent, 99]


def test_equal_order_values_across_batch_boundaries(
        source_db: SourceDb, make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    ticks = [1, 1, 2, 2, 2, 2, 2, 3, 4, 4, 4, 5]
    source_db.insert(METRICS, [{**row, "tick": tick} for row, tick in zip(metric_rows(range(1, 13)), ticks,
                                                                           strict=True)])
    runtime, source = make_runtime(source_db.url, 'table = "metrics"\norder_column = "tick"\nbatch_size = 3\n'
                                                  'max_batches = 1')
    # [1 1 |2] 2 leaves the 2s; [2 2 2] 2 is all one value: all five 2s; [3 |4 4] 4; [4 4 4] 5; [5]
    assert drain(source) == [2, 5, 1, 3, 1]
    source_db.insert(METRICS, [{**row, "tick": 6} for row in metric_rows(range(13, 17))])
    assert drain(source) == [4]
    ids = [r["id"] for r in stored(runtime)]
    assert sorted(ids) == list(range(1, 17)) and len(ids) == 16      # nothing lost, nothing twice
    assert watermark(runtime) == 6


def test_text_order_values_are_bound_not_formatted(
        source_db: SourceDb, make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    hosts = ["a'b", "c\"d", "e;--", "f\\g", "h:i"]
    source_db.insert(METRICS, [{**row, "host": host} for row, host in zip(metric_rows(range(1, 6)), hosts,
                                                                           strict=True)])
    runtime, source = make_runtime(source_db.url, 'table = "metrics"\norder_column = "host"\nbatch_size = 2')
    assert sum(drain(source)) == 5
    assert watermark(runtime) == "h:i"
    assert sorted(r.key or "" for r in runtime.vigil.repo.training_window("db", EPOCH, 100)) == sorted(hosts)


def test_initial_integer_starts_at_that_id(
        source_db: SourceDb, make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    source_db.insert(METRICS, metric_rows(range(1, 8)))
    runtime, source = make_runtime(source_db.url, 'table = "metrics"\norder_column = "id"\ninitial = 4')
    assert drain(source) == [4]
    assert [r["id"] for r in stored(runtime)] == [4, 5, 6, 7]


def test_postgresql_session_is_utc_with_a_statement_timeout(
        make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    require_postgres()
    with fresh_database() as url:
        db = SourceDb(url, "postgresql", sa.create_engine(url))
        db.execute("CREATE TABLE slow (id INTEGER, pause FLOAT)")
        db.execute("INSERT INTO slow VALUES (1, 0)")
        query = "SELECT id, current_setting('TimeZone') AS tz, pg_sleep(pause)::text AS slept FROM slow"
        runtime, source = make_runtime(url, f'query = "{query}"\norder_column = "id"\ntimeout = "1s"',
                                       features='tz = "categorical"')
        assert drain(source) == [1]
        assert stored(runtime)[0]["tz"] == "UTC"        # naive times compare as UTC, as Vigil reads them
        db.execute("INSERT INTO slow VALUES (2, 3)")
        started = datetime.now(UTC)
        with pytest.raises(SourceError, match="canceling statement due to statement timeout"):
            source.poll()
        assert datetime.now(UTC) - started < timedelta(seconds=2.5)
        assert watermark(runtime) == 1
        source.close()
        db.engine.dispose()


def test_bad_rows_are_rejected_naming_record_and_field_and_good_rows_go_on(
        source_db: SourceDb, make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    source_db.insert(METRICS, metric_rows(range(1, 9)))
    source_db.execute("UPDATE metrics SET load = NULL WHERE id = 3")
    if source_db.kind == "sqlite":              # SQLite keeps what it is given: text in a REAL column
        source_db.execute("UPDATE metrics SET load = 'n/a' WHERE id = 6")
        bad = ("wrong_type", "expected a number, got 'n/a'")
    else:                                       # a typed column cannot: NaN is PostgreSQL's bad number
        source_db.execute("UPDATE metrics SET load = 'NaN' WHERE id = 6")
        bad = ("not_finite", "expected a finite number, got nan")
    runtime, source = make_runtime(source_db.url, 'table = "metrics"\norder_column = "id"\nbatch_size = 4')
    assert drain(source) == [6]                 # two batches in one poll
    assert [r["id"] for r in stored(runtime)] == [1, 2, 4, 5, 7, 8]
    rejects = sorted(runtime.vigil.repo.list_rejects("db"), key=lambda r: r["id"])
    assert [(r["field"], r["reason"], r["origin"]) for r in rejects] == [
        ("load", "missing_field", "metrics id 1..4"), ("load", bad[0], "metrics id 5..8")]
    assert rejects[0]["message"] == "record 2: field 'load': required field is missing or null"
    assert rejects[1]["message"] == f"record 1: field 'load': {bad[1]}"
    assert watermark(runtime) == 8              # the bad rows are not read again


def test_unreachable_server_is_a_source_error_without_the_password(
        make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    url = f"postgresql+psycopg://vigil:s3cret@127.0.0.1:{free_port()}/events"
    runtime, source = make_runtime(url, 'table = "metrics"\norder_column = "id"\ntimeout = "2s"')
    with pytest.raises(SourceError) as info:
        source.poll()
    message = str(info.value)
    assert info.value.source == "sql"
    assert "s3cret" not in message
    assert f"vigil:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in message
    assert "cannot read" in message and "Connection refused" in message
    assert stored(runtime) == [] and watermark(runtime) is None
    runtime._on_job_error("poll:db", info.value)        # what the scheduler does with it
    assert runtime.registry.get_sample_value("vigil_errors_total", {"component": "source"}) == 1


def test_sqlite_source_down_then_back(tmp_path: Path, make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    path = tmp_path / "later" / "source.db"
    runtime, source = make_runtime(f"sqlite:///{path}", 'table = "metrics"\norder_column = "id"\nbatch_size = 3')
    with pytest.raises(SourceError, match=r"source\.db not found"):
        source.poll()
    assert not path.parent.exists()             # the source never creates the database
    path.parent.mkdir()
    db = SourceDb(f"sqlite:///{path}", "sqlite", sa.create_engine(f"sqlite:///{path}"))
    try:
        db.execute("CREATE TABLE other (x INTEGER)")
        with pytest.raises(SourceError, match=r"cannot read: OperationalError: no such table: metrics"):
            source.poll()
        metadata.create_all(db.engine)
        db.insert(METRICS, metric_rows(range(1, 6)))
        assert drain(source) == [5]
        db.engine.dispose()
        moved = path.with_name("moved.db")
        path.rename(moved)                      # the file goes away...
        with pytest.raises(SourceError, match="not found"):
            source.poll()
        db = SourceDb(f"sqlite:///{moved}", "sqlite", sa.create_engine(f"sqlite:///{moved}"))
        db.insert(METRICS, metric_rows(range(6, 10)))       # ...rows arrive meanwhile...
        db.engine.dispose()
        moved.rename(path)                      # ...and it comes back
        assert watermark(runtime) == 5
        assert drain(source) == [4]
        assert [r["id"] for r in stored(runtime)] == list(range(1, 10))
    finally:
        db.engine.dispose()


def test_postgresql_source_down_then_back(make_runtime: Callable[..., tuple[Runtime, SqlSource]]) -> None:
    require_postgres()
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with fresh_database() as url:
        name = url.rsplit("/", 1)[1]
        db = SourceDb(url, "postgresql", sa.create_engine(url))
        metadata.create_all(db.engine)
        db.insert(METRICS, metric_rows(range(1, 6)))
        db.engine.dispose()
        with_password = url.replace("postgres@", "postgres:s3cret@")     # trust auth ignores it
        runtime, source = make_runtime(with_password, 'table = "metrics"\norder_column = "id"\nbatch_size = 2')
        assert drain(source) == [5]             # the source now holds a pooled connection

        def rename(old: str, new: str) -> None:
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": old})
                conn.execute(sa.text(f'ALTER DATABASE "{old}" RENAME TO "{new}"'))

        rename(name, name + "_away")
        try:
            with pytest.raises(SourceError) as info:
                source.poll()
            assert "s3cret" not in str(info.value) and "postgres:***@" in str(info.value)
            assert f'database "{name}" does not exist' in str(info.value)
            assert watermark(runtime) == 5
            away = SourceDb(url + "_away", "postgresql", sa.create_engine(url + "_away"))
            away.insert(METRICS, metric_rows(range(6, 12)))
            away.engine.dispose()
        finally:
            rename(name + "_away", name)
        assert drain(source) == [6]             # from where it stopped: no gap, no duplicate
        assert [r["id"] for r in stored(runtime)] == list(range(1, 12))
        source.close()
    admin.dispose()


BASE = DETECTOR.format(url="sqlite:///src.db", source="{source}", features=FEATURES)


@pytest.mark.parametrize(("source", "key", "problem"), [
    ('table = "metrics"\nquery = "SELECT * FROM metrics"\norder_column = "id"',
     "detectors.db.source.query", "set either table or query, not both"),
    ('order_column = "id"', "detectors.db.source", "set table = 'name' or query = 'SELECT ...'"),
    ('table = "metrics; DROP TABLE x"\norder_column = "id"', "detectors.db.source.table", "must be a table name"),
    ('table = "a.b.c"\norder_column = "id"', "detectors.db.source.table", "must be a table name"),
    ('query = "DELETE FROM metrics"\norder_column = "id"', "detectors.db.source.query", "must be a SELECT"),
    ('table = "metrics"', "detectors.db.source.order_column", "required key is missing"),
    ('table = "metrics"\norder_column = "id) OR (1=1"', "detectors.db.source.order_column", "must be a column"),
    ('table = "metrics"\norder_column = "id"\nbatch_size = 0', "detectors.db.source.batch_size",
     "Input should be greater than 0"),
    ('table = "metrics"\norder_column = "id"\ninitial = "last tuesday"', "detectors.db.source.initial",
     "initial is a duration"),
], ids=["both", "neither", "injection", "three-parts", "not-select", "no-order", "bad-column", "batch", "initial"])
def test_config_validation_names_the_key(write_config: Callable[[str], Path], source: str, key: str,
                                         problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(BASE.format(source=source)))
    assert f"{key}: {problem}" in str(info.value)


def test_config_refuses_unknown_driver(write_config: Callable[[str], Path]) -> None:
    body = BASE.format(source='table = "metrics"\norder_column = "id"').replace("sqlite:///src.db",
                                                                                 "nosuchdb://h/db")
    with pytest.raises(ConfigError, match=r"detectors.db.source.url: not a usable SQLAlchemy URL"):
        load_config(write_config(body))


def test_config_defaults_and_relative_sqlite_path(write_config: Callable[[str], Path], tmp_path: Path) -> None:
    config = load_config(write_config(BASE.format(source='table = "ops.metrics"\norder_column = "id"')))
    cfg = config.detectors["db"].source
    assert isinstance(cfg, SqlSourceConfig)
    assert cfg.url == f"sqlite:///{tmp_path / 'src.db'}"
    assert (cfg.table, cfg.query, cfg.batch_size, cfg.max_batches) == ("ops.metrics", None, 5000, 20)
    assert (cfg.poll_interval, cfg.timeout, cfg.initial) == (10.0, 10.0, None)
    absolute = load_config(write_config(BASE.replace("sqlite:///src.db", "sqlite:////data/src.db").format(
        source='query = " select 1 AS id ; "\norder_column = "id"\ninitial = 2025-03-03T00:00:00Z')))
    cfg = absolute.detectors["db"].source
    assert isinstance(cfg, SqlSourceConfig)
    assert (cfg.url, cfg.query, cfg.initial) == ("sqlite:////data/src.db", "select 1 AS id", T0)


@pytest.mark.parametrize("value", [7, 2.5, "text", T0, T0.date(), Decimal("1.10")])
def test_watermark_round_trip(value: Any) -> None:
    back = decode_position(encode_position(value))
    assert back == value and type(back) is type(value)
