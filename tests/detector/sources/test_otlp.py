"""The otlp source: OTLP/HTTP metric exports in, records out.

The rule from data points to records on hand-built exports; the API route with protobuf, JSON, gzip,
malformed bodies and the token; and the real OpenTelemetry SDK's OTLP/HTTP exporter sending to a running
`vigil run`, whose exported points are stored, train the first model and are then scored.
"""

from __future__ import annotations

import gzip
import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, NumberDataPoint
from prometheus_client import CollectorRegistry

from detector.api.app import create_app
from detector.config import load_config
from detector.config.sources import OtlpSourceConfig
from detector.daemon import Runtime, build_runtime
from detector.sources.otlp import records_from_export
from tests.support.config import config_text, daemon_heading, detector, heading, write_config_file
from tests.support.daemon import Daemon
from tests.support.net import free_port

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
PATH = "/v1/detectors/hosts/otlp/v1/metrics"
OTLP_DETECTOR = """
[detectors.hosts]
source = { type = "otlp", key_attributes = ["host.name"], ignore_attributes = ["pid"] }
key_field = "host"

[detectors.hosts.features]
"system.cpu.utilization" = "numeric"
"system.memory.usage" = "numeric"
"disk.io{direction=read}" = { kind = "numeric", optional = true }
"""


def _kv(pairs: dict[str, Any]) -> list[KeyValue]:
    out = []
    for key, value in pairs.items():
        any_value = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=str(value))
        out.append(KeyValue(key=key, value=any_value))
    return out


def _point(value: float | int, at: datetime, **attributes: Any) -> NumberDataPoint:
    point = NumberDataPoint(time_unix_nano=int(at.timestamp() * 1e9), attributes=_kv(attributes))
    if isinstance(value, int):
        point.as_int = value
    else:
        point.as_double = value
    return point


def export(hosts: Iterable[tuple[str, dict[str, list[NumberDataPoint]]]],
           histogram: bool = False) -> ExportMetricsServiceRequest:
    """One ResourceMetrics per host (host.name as a resource attribute), gauges as given (name -> points)."""
    request = ExportMetricsServiceRequest()
    for host, gauges in hosts:
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.attributes.extend(_kv({"host.name": host, "service.name": "api"}))
        scope = resource_metrics.scope_metrics.add()
        for name, points in gauges.items():
            metric = Metric(name=name)
            if name.endswith(".total"):
                metric.sum.data_points.extend(points)
            else:
                metric.gauge.data_points.extend(points)
            scope.metrics.append(metric)
        if histogram:
            h = Metric(name="http.server.duration")
            h.histogram.data_points.add(time_unix_nano=int(T0.timestamp() * 1e9), count=3, sum=1.5)
            scope.metrics.append(h)
    return request


def host_export(minute: int, hosts: Iterable[str] = ("a", "b"),
                cpu: float | None = None) -> ExportMetricsServiceRequest:
    at = T0 + timedelta(minutes=minute)
    return export((host, {
        "system.cpu.utilization": [_point(cpu if cpu is not None else 0.2 + 0.01 * (minute % 7), at)],
        "system.memory.usage": [_point(1000 + 10 * (minute % 5), at, pid=4242)],
    }) for host in hosts)


def test_points_become_records_by_the_documented_rule() -> None:
    cfg = OtlpSourceConfig(type="otlp", key_attributes=("host.name",), ignore_attributes=("pid",), align=1.0)
    at = T0 + timedelta(milliseconds=300)
    request = export([("a", {
        "system.cpu.utilization": [_point(0.5, T0)],
        "system.memory.usage": [_point(2048, at, pid=7)],            # pid ignored: the plain feature name
        "disk.io": [_point(3.0, T0, direction="read"), _point(4.0, T0, direction="write")],
        "queue.depth": [_point(9.0, T0)],                             # no feature: reported, not stored
    }), ("b", {"system.cpu.utilization": [_point(0.7, T0, **{"host.name": "b-override"})]})], histogram=True)
    features = {"system.cpu.utilization", "system.memory.usage", "disk.io{direction=read}"}
    out = records_from_export(request, cfg, features, "time", "host")
    assert out.records == [
        {"time": T0.isoformat(), "system.cpu.utilization": 0.5, "system.memory.usage": 2048.0,
         "disk.io{direction=read}": 3.0, "host": "a"},
        # a point attribute named like a key attribute wins over the resource's
        {"time": T0.isoformat(), "system.cpu.utilization": 0.7, "host": "b-override"},
    ]
    assert out.points == [3, 1]
    assert out.unused == {"disk.io{direction=write}": 1, "queue.depth": 1}
    assert out.unsupported == {"http.server.duration": 2}          # one histogram point per host


def test_points_more_than_an_align_step_apart_are_separate_records() -> None:
    cfg = OtlpSourceConfig(type="otlp", key_attributes=("host.name",), align=10.0)
    request = export([("a", {"cpu": [_point(1.0, T0), _point(2.0, T0 + timedelta(seconds=9)),
                                     _point(3.0, T0 + timedelta(seconds=10))]})])
    out = records_from_export(request, cfg, {"cpu"}, "ts", "key")
    assert [(r["ts"], r["cpu"]) for r in out.records] == [(T0.isoformat(), 2.0),
                                                          ((T0 + timedelta(seconds=10)).isoformat(), 3.0)]


@pytest.fixture
def otlp_runtime(write_config: Callable[[str], Path]) -> Runtime:
    return build_runtime(load_config(write_config(OTLP_DETECTOR)), CollectorRegistry(), with_process_metrics=False)


@pytest.fixture
def otlp_client(otlp_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(otlp_runtime, manage_jobs=False)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {otlp_runtime.token}"
        yield test_client


def _stored(runtime: Runtime) -> int:
    c = runtime.vigil.repo.counts().get("hosts")
    return 0 if c is None else c.pending + c.scored


def test_protobuf_json_and_gzip_exports_are_stored(otlp_client: TestClient, otlp_runtime: Runtime) -> None:
    body = host_export(0).SerializeToString()
    r = otlp_client.post(PATH, content=body, headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    reply = ExportMetricsServiceResponse.FromString(r.content)
    assert not reply.HasField("partial_success")
    assert _stored(otlp_runtime) == 2

    r = otlp_client.post(PATH, content=gzip.compress(host_export(1).SerializeToString()),
                         headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert r.status_code == 200 and _stored(otlp_runtime) == 4

    from google.protobuf import json_format

    text = json_format.MessageToJson(host_export(2))
    r = otlp_client.post(PATH, content=text.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {} and _stored(otlp_runtime) == 6


def test_refused_points_are_counted_in_the_partial_success(otlp_client: TestClient, otlp_runtime: Runtime) -> None:
    request = host_export(0, hosts=("a",), cpu=math.nan)           # validation refuses NaN: not_finite
    request.resource_metrics.extend(host_export(0, hosts=("b",)).resource_metrics)
    r = otlp_client.post(PATH, content=request.SerializeToString(), headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 200
    partial = ExportMetricsServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_data_points == 2                     # both points of host a's record
    assert "system.cpu.utilization" in partial.error_message and "finite" in partial.error_message
    assert _stored(otlp_runtime) == 1
    rejects = otlp_runtime.vigil.repo.list_rejects("hosts", 10)
    assert [r["reason"] for r in rejects] == ["not_finite"]


def test_malformed_protobuf_is_a_400_with_a_reason_and_kept(otlp_client: TestClient, otlp_runtime: Runtime) -> None:
    r = otlp_client.post(PATH, content=b"\x0a\xff\xff\xff\xff\x0fgarbage",
                         headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 400
    assert "not an OTLP ExportMetricsServiceRequest" in r.json()["error"]
    assert r.json()["rejected"][0]["reason"] == "malformed"
    assert [x["reason"] for x in otlp_runtime.vigil.repo.list_rejects("hosts", 10)] == ["malformed"]
    bad_gzip = otlp_client.post(PATH, content=b"not gzip", headers={"Content-Type": "application/x-protobuf",
                                                                    "Content-Encoding": "gzip"})
    assert bad_gzip.status_code == 400 and "gzip" in bad_gzip.json()["error"]
    bad_json = otlp_client.post(PATH, content=b'{"resourceMetrics": 3}', headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "OTLP JSON" in bad_json.json()["error"]
    other = otlp_client.post(PATH, content=b"x", headers={"Content-Type": "text/plain"})
    assert other.status_code == 415 and "text/plain" in other.json()["error"]
    assert _stored(otlp_runtime) == 0


def test_a_decompressed_body_over_the_limit_is_refused(tmp_path: Path) -> None:
    config = load_config(write_config_file(tmp_path / "config.toml", heading(http={"max_body_bytes": 2000}),
                                           OTLP_DETECTOR))
    runtime = build_runtime(config, CollectorRegistry(), with_process_metrics=False)
    with TestClient(create_app(runtime, manage_jobs=False)) as client:
        bomb = gzip.compress(b"\x00" * 100_000)                      # 100 kB of zeros in a small body
        r = client.post(PATH, content=bomb, headers={"Authorization": f"Bearer {runtime.token}",
                                                     "Content-Type": "application/x-protobuf",
                                                     "Content-Encoding": "gzip"})
    assert len(bomb) < 2000 and r.status_code == 413 and "max_body_bytes=2000" in r.json()["error"]


def test_the_token_and_the_source_type_are_checked(otlp_client: TestClient, client: TestClient,
                                                  auth: dict[str, str]) -> None:
    body = host_export(0).SerializeToString()
    assert otlp_client.post(PATH, content=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert otlp_client.post("/v1/detectors/nope/otlp/v1/metrics", content=body).status_code == 404
    wrong = client.post("/v1/detectors/web/otlp/v1/metrics", content=body, headers=auth)   # an http detector
    assert wrong.status_code == 409 and "otlp" in wrong.json()["error"]


# -- the real SDK exporter against a running daemon ---------------------------------------------------------

def _daemon_config(port: int) -> str:
    return config_text(daemon_heading(port), detector(
        "hosts", {"system.cpu.utilization": "numeric", "system.memory.usage": "numeric"},
        source={"type": "otlp", "key_attributes": ["host.name"]}, key_field="host",
        model={"hidden": [8], "latent": 2, "epochs": 20, "batch_size": 32, "patience": 3, "seed": 0,
               "device": "cpu"},
        threshold={"target_fpr": 0.05, "calibration_folds": 1},
        training={"window": "30d", "min_records": 40, "max_records": 5000, "first_window_trim": 0.0},
        scoring={"interval": "1s", "batch_size": 500}))


def test_the_sdk_exporter_feeds_a_running_daemon_that_stores_and_scores(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    port = free_port()
    config = write_config_file(tmp_path / "config.toml", _daemon_config(port))
    with Daemon(config, port, tmp_path / "state", detector="hosts") as daemon:
        daemon.start()
        step = {"n": 0}

        def cpu(options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(0.3 + 0.02 * (step["n"] % 9))

        def memory(options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(2000 + 40 * (step["n"] % 9))

        providers = []
        for host in ("web-1", "web-2"):
            exporter = OTLPMetricExporter(endpoint=f"{daemon.url}{PATH}",
                                          headers={"Authorization": f"Bearer {daemon.token}"}, timeout=10)
            reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
            provider = MeterProvider(metric_readers=[reader],
                                     resource=Resource.create({"host.name": host, "service.name": "api"}))
            meter = provider.get_meter("vigil-test")
            meter.create_observable_gauge("system.cpu.utilization", callbacks=[cpu])
            meter.create_observable_gauge("system.memory.usage", callbacks=[memory])
            providers.append(provider)
        try:
            for n in range(25):                      # each flush exports one point per gauge and host
                step["n"] = n
                for provider in providers:
                    assert provider.force_flush(10_000)
                time.sleep(1.05)                     # the SDK stamps points with the wall clock: one record a second
            daemon.wait_for(lambda: (daemon.status()["model"] or {}).get("version") == 1,
                            240, "the first model, trained on exported points")
            before = daemon.status()["records"]["scored"]
            for n in range(25, 30):
                step["n"] = n
                for provider in providers:
                    assert provider.force_flush(10_000)
                time.sleep(1.05)
            daemon.wait_for(lambda: daemon.status()["records"]["scored"] >= before + 10,
                            60, "exported points scored by the model")
        finally:
            for provider in providers:
                provider.shutdown()
        records = daemon.status()["records"]
        assert records["rejected"] == 0 and records["pending"] + records["scored"] >= 60
        assert daemon.status()["source"] == "otlp"
