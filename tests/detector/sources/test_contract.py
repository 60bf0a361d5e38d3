"""The contract every source keeps, run against each of them: demo, file, sql, prometheus and http.

A source hands its detector's records to the daemon only through its `Sink`; every record it can read is
stored exactly once (a second poll with nothing new stores nothing, a restarted source resumes where the
store says it stopped, without a gap or a duplicate); the records carry the detector's own time and key
field names; and the registry knows every source type the config accepts.

Each source reads a real input: a spool folder, a SQLite table, a Prometheus HTTP API served on loopback,
request bodies, the demo generator on a fake clock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import typing
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from detector.config import SourceConfig, load_config
from detector.daemon import Runtime, build_runtime
from detector.records import IngestResult, Rejection
from detector.service import DetectorSink
from detector.sources.http import HttpSource
from detector.sources.registry import PULL_SOURCES, PUSH_SOURCES, pull_source
from detector.store.types import PendingRecord

START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
FEATURES = """
[detectors.contract.features]
x = "numeric"
y = "numeric"
"""
DEMO_FEATURES = """
[detectors.contract.features]
request_rate = "numeric"
cpu_pct = "numeric"
region = "categorical"
"""


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class RecordingSink:
    """A real sink that also counts what went through it (the only way a source reaches the daemon)."""

    def __init__(self, inner: DetectorSink) -> None:
        self._inner = inner
        self.accepted = 0
        self.batches = 0

    @property
    def detector(self) -> str:
        return self._inner.detector

    @property
    def ts_field(self) -> str:
        return self._inner.ts_field

    @property
    def key_field(self) -> str:
        return self._inner.key_field

    def ingest(self, raws: list[Any], origin: str | None = None, watermark: tuple[str, str] | None = None,
               start_index: int = 0) -> IngestResult:
        result = self._inner.ingest(raws, origin, watermark, start_index)
        self.accepted += result.accepted
        self.batches += 1
        return result

    def reject_whole(self, reason: str, message: str, origin: str | None = None,
                     raw: str | None = None) -> Rejection:
        return self._inner.reject_whole(reason, message, origin, raw)

    def watermark(self, name: str) -> str | None:
        return self._inner.watermark(name)

    def stopping(self) -> bool:
        return self._inner.stopping()


def _rows(start: int, n: int, ts_field: str, key_field: str) -> list[dict[str, Any]]:
    """n rows from row number `start`: two hosts, a minute apart, values that follow the row number."""
    return [{ts_field: (START + timedelta(minutes=i)).isoformat(), key_field: f"h{i % 2}",
             "x": float(i % 17), "y": float((3 * i) % 11)} for i in range(start, start + n)]


class Feed:
    """One kind of source under test: its config section, a way to make input appear, and a way to pump."""

    kind = ""
    features = FEATURES

    def __init__(self, tmp_path: Path, ts_field: str, key_field: str) -> None:
        self.tmp_path = tmp_path
        self.ts_field = ts_field
        self.key_field = key_field
        self.produced = 0
        self.clock = Clock(START)

    def source_toml(self) -> str:
        raise NotImplementedError

    def produce(self, n: int) -> None:
        """Make about n new records readable by the source."""
        raise NotImplementedError

    def make(self, runtime: Runtime, sink: RecordingSink) -> Any:
        source = pull_source(runtime.config.detectors["contract"], sink)
        assert source is not None
        return source

    def pump(self, source: Any) -> int:
        return int(source.poll())

    def close(self) -> None:
        pass


class DemoFeed(Feed):
    kind = "demo"
    features = DEMO_FEATURES

    def source_toml(self) -> str:
        return 'source = { type = "demo", hosts = 2, step = "1m", history = "30m", speed = 1, seed = 3 }'

    def produce(self, n: int) -> None:
        self.clock.now += timedelta(minutes=max(1, n // 2))   # two hosts per simulated minute

    def make(self, runtime: Runtime, sink: RecordingSink) -> Any:
        from detector.sources.demo import DemoSource

        cfg = runtime.config.detectors["contract"].source
        return DemoSource(typing.cast(Any, cfg), sink, clock=self.clock)     # the registry's class, on a fake clock


class FileFeed(Feed):
    kind = "file"

    def source_toml(self) -> str:
        (self.tmp_path / "spool").mkdir()
        return f'source = {{ type = "file", path = "{self.tmp_path / "spool"}", settle = "0s" }}'

    def produce(self, n: int) -> None:
        rows = _rows(self.produced, n, self.ts_field, self.key_field)
        path = self.tmp_path / "spool" / f"batch-{self.produced:06d}.ndjson"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        self.produced += n


class SqlFeed(Feed):
    kind = "sql"

    def source_toml(self) -> str:
        self.db = self.tmp_path / "events.db"
        with sqlite3.connect(self.db) as conn:
            conn.execute(f"CREATE TABLE events (id INTEGER PRIMARY KEY, {self.ts_field} TEXT, "
                         f"{self.key_field} TEXT, x REAL, y REAL)")
        return (f'source = {{ type = "sql", url = "sqlite:///{self.db}", table = "events", '
                f'order_column = "id", batch_size = 7 }}')

    def produce(self, n: int) -> None:
        rows = _rows(self.produced, n, self.ts_field, self.key_field)
        with sqlite3.connect(self.db) as conn:
            conn.executemany(f"INSERT INTO events ({self.ts_field}, {self.key_field}, x, y) VALUES (?, ?, ?, ?)",
                             [(r[self.ts_field], r[self.key_field], r["x"], r["y"]) for r in rows])
        self.produced += n



class _QueryRange(BaseHTTPRequestHandler):
    """POST /api/v1/query_range over two series per query (instance a and b), one point a minute up to `now`."""

    clock: Clock

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        q = urllib.parse.parse_qs(self.rfile.read(length).decode())
        start, end, step = float(q["start"][0]), float(q["end"][0]), float(q["step"][0])
        end = min(end, self.clock.now.timestamp())
        name = q["query"][0]
        result = []
        for instance, offset in (("a", 0.0), ("b", 5.0)):
            values, t = [], start
            while t <= end + 1e-9:
                minute = int((t - START.timestamp()) // 60)
                values.append([t, str(float(minute % 13) + offset + (0.5 if name == "y" else 0.0))])
                t += step
            result.append({"metric": {"instance": instance}, "values": values})
        body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class PrometheusFeed(Feed):
    kind = "prometheus"

    def source_toml(self) -> str:
        handler = type("Handler", (_QueryRange,), {"clock": self.clock})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.clock.now = START + timedelta(minutes=10)
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return (f'source = {{ type = "prometheus", url = "{url}", queries = {{ x = "x", y = "y" }}, step = "1m", '
                f'key_label = "instance", lag = "0s", backfill = "10m" }}')

    def produce(self, n: int) -> None:
        self.clock.now += timedelta(minutes=max(1, n // 2))   # two series per minute

    def make(self, runtime: Runtime, sink: RecordingSink) -> Any:
        from detector.sources.prometheus import PrometheusSource

        cfg = runtime.config.detectors["contract"].source
        return PrometheusSource(typing.cast(Any, cfg), sink, clock=self.clock)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HttpFeed(Feed):
    """Bodies pushed by clients; 'pumping' hands each waiting body to the source as the API does."""

    kind = "http"

    def source_toml(self) -> str:
        self.bodies: list[bytes] = []
        return 'source = { type = "http" }'

    def produce(self, n: int) -> None:
        rows = _rows(self.produced, n, self.ts_field, self.key_field)
        self.bodies.append("".join(json.dumps(r) + "\n" for r in rows).encode())
        self.produced += n

    def make(self, runtime: Runtime, sink: RecordingSink) -> Any:
        assert pull_source(runtime.config.detectors["contract"], sink) is None    # nothing to poll
        cfg = runtime.config.detectors["contract"].source
        return HttpSource(typing.cast(Any, cfg), sink, runtime.config.http)

    def pump(self, source: Any) -> int:
        accepted = 0
        while self.bodies:
            reply = source.receive(self.bodies.pop(0), "application/x-ndjson")
            assert reply.status == 200, reply.body
            accepted += reply.body["accepted"]
        return accepted


class OtlpFeed(Feed):
    """OTLP metric exports (protobuf): one gauge point per feature, host and minute, the host a resource
    attribute; 'pumping' hands each waiting export to the source as the API does."""

    kind = "otlp"

    def source_toml(self) -> str:
        self.bodies: list[bytes] = []
        return 'source = { type = "otlp", key_attributes = ["host.name"], align = "1m" }'

    def produce(self, n: int) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

        request = ExportMetricsServiceRequest()
        for row in _rows(self.produced, n, "ts", "host"):
            resource = request.resource_metrics.add()
            resource.resource.attributes.append(KeyValue(key="host.name", value=AnyValue(string_value=row["host"])))
            metrics = resource.scope_metrics.add().metrics
            t_ns = int(datetime.fromisoformat(row["ts"]).timestamp() * 1e9)
            for name in ("x", "y"):
                metric = metrics.add(name=name)
                metric.gauge.data_points.add(time_unix_nano=t_ns, as_double=row[name])
        self.bodies.append(request.SerializeToString())
        self.produced += n

    def make(self, runtime: Runtime, sink: RecordingSink) -> Any:
        from detector.sources.otlp import OtlpSource

        assert pull_source(runtime.config.detectors["contract"], sink) is None    # nothing to poll
        det = runtime.config.detectors["contract"]
        self.sink = sink              # an OTLP answer counts refused points only: accepted ones are the sink's
        return OtlpSource(typing.cast(Any, det.source), sink, runtime.config.http, det.feature_schema.names)

    def pump(self, source: Any) -> int:
        before = self.sink.accepted
        while self.bodies:
            reply = source.receive(self.bodies.pop(0), "application/x-protobuf")
            assert reply.status == 200 and reply.body == b"", reply.body      # no partial success: all stored
        return self.sink.accepted - before


FEEDS: dict[str, type[Feed]] = {f.kind: f for f in (DemoFeed, FileFeed, SqlFeed, PrometheusFeed, HttpFeed, OtlpFeed)}


@pytest.fixture(params=sorted(FEEDS))
def feed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Feed]:
    instance = FEEDS[request.param](tmp_path, "time", "host")
    yield instance
    instance.close()


@pytest.fixture
def contract_runtime(feed: Feed, write_config: Callable[[str], Path]) -> Runtime:
    body = (f'[detectors.contract]\n{feed.source_toml()}\nts_field = "{feed.ts_field}"\n'
            f'key_field = "{feed.key_field}"\n{feed.features}')
    return build_runtime(load_config(write_config(body)), CollectorRegistry(), with_process_metrics=False)


def _sink(runtime: Runtime, feed: Feed) -> RecordingSink:
    return RecordingSink(runtime.vigil.sink("contract", feed.kind))


def _stored(runtime: Runtime) -> list[PendingRecord]:
    return runtime.vigil.repo.training_window("contract", datetime(2000, 1, 1, tzinfo=UTC), 1_000_000, ())


def _assert_each_once(runtime: Runtime) -> list[PendingRecord]:
    stored = _stored(runtime)
    identities = [(r.key, r.ts) for r in stored]
    assert len(identities) == len(set(identities)), "a record was stored twice"
    return stored


def test_every_record_is_stored_once_and_a_second_poll_stores_nothing(feed: Feed,
                                                                       contract_runtime: Runtime) -> None:
    sink = _sink(contract_runtime, feed)
    source = feed.make(contract_runtime, sink)
    feed.produce(20)
    accepted = feed.pump(source)
    assert accepted > 0
    assert accepted == sink.accepted == len(_assert_each_once(contract_runtime))
    assert feed.pump(source) == 0
    assert len(_assert_each_once(contract_runtime)) == accepted


def test_a_restarted_source_resumes_without_gap_or_duplicate(feed: Feed, contract_runtime: Runtime) -> None:
    feed.produce(20)
    first = feed.pump(feed.make(contract_runtime, _sink(contract_runtime, feed)))
    feed.produce(12)
    later = _sink(contract_runtime, feed)
    second = feed.pump(feed.make(contract_runtime, later))      # a new instance: only the store remembers
    assert first > 0 and second > 0 and second == later.accepted
    stored = _assert_each_once(contract_runtime)
    assert len(stored) == first + second
    newest_first = max(r.ts for r in stored[:first]) if first else None
    assert newest_first is not None and sorted(r.ts for r in stored)[-1] > newest_first


def test_records_carry_the_detectors_time_and_key_fields(feed: Feed, contract_runtime: Runtime) -> None:
    feed.produce(10)
    feed.pump(feed.make(contract_runtime, _sink(contract_runtime, feed)))
    stored = _assert_each_once(contract_runtime)
    assert stored and all(r.key is not None for r in stored)
    assert len({r.key for r in stored}) == 2
    assert all(r.ts.year == START.year for r in stored)          # read from the `time` field, not receipt
    assert all(set(r.fields) >= set(contract_runtime.config.detectors["contract"].feature_schema.names)
               for r in stored)


def test_the_registry_knows_every_source_type_the_config_accepts() -> None:
    types = {typing.get_args(member.model_fields["type"].annotation)[0]
             for member in typing.get_args(typing.get_args(SourceConfig)[0])}
    assert types == set(PULL_SOURCES) | PUSH_SOURCES == set(FEEDS)
