"""Fuzzing the HTTP API: schemathesis over the OpenAPI schema, hypothesis over the ingest body.

The real app runs in-process (ASGI) over the conftest `runtime` (SQLite file, the `web` http detector) with
a trained model, outliers and rejects in the store, so that the read endpoints serialise real rows. Every
answer must be below 500. The ingest endpoint reads the raw body (the schema declares no request body), so
a separate hypothesis test posts generated JSON values, records, NDJSON and byte strings to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.schemas import OpenApiSchema

from detector.api.app import create_app
from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from tests.detector.conftest import HTTP_DETECTOR
from tests.pg import fresh_database, require_postgres

URL = "/v1/detectors/web/records"
START = datetime(2025, 3, 3, tzinfo=UTC)
REGIONS = ("eu-west", "us-east", "ap-south")
FEATURES = ("load", "cpu", "latency", "region", "healthy")

FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])


def normal_records(n: int, start: datetime = START) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        load = float(rng.uniform(0.2, 1.0))
        out.append({"ts": (start + timedelta(minutes=i)).isoformat(), "host": f"web-{i % 4}", "load": load,
                    "cpu": 10 + 70 * load + float(rng.normal(0, 2)),
                    "latency": 40 + 120 * load + float(rng.normal(0, 4)),
                    "region": REGIONS[i % 3], "healthy": True})
    return out


def populate(runtime: Runtime) -> None:
    """A trained model, scored records with outliers among them, and rejects."""
    vigil = runtime.vigil
    vigil.ingest("web", normal_records(250), "http", "http")
    assert runtime.trainer.train("web", "first").result == "success"
    later = START + timedelta(days=1)
    anomalies = [{"ts": later.isoformat(), "host": "web-0", "load": 0.3, "cpu": 99.0, "latency": 1500.0 + i,
                  "region": "mars", "healthy": False, "note": "injected"} for i in range(3)]
    vigil.ingest("web", normal_records(20, later) + anomalies, "http", "http")
    vigil.ingest("web", [{"host": "web-1", "load": "high"}, 7, {"cpu": float("nan")}], "http", "http")
    runtime.scorer.score("web")      # the 250 ingested before the model; the 23 after it were scored on ingest
    counts = vigil.repo.counts()["web"]
    assert (counts.pending, counts.scored) == (0, 273)
    assert vigil.repo.list_outliers("web", None, 10)


@pytest.fixture(params=["sqlite", "postgresql"])
def fuzzed(request: pytest.FixtureRequest, runtime: Runtime,
           write_config: Callable[..., Path]) -> Iterator[tuple[OpenApiSchema, Runtime]]:
    """The schema of the app over the conftest runtime (SQLite), and over the same config on PostgreSQL."""
    if request.param == "sqlite":
        populate(runtime)
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(runtime, manage_jobs=False)), runtime
        return
    require_postgres()
    with fresh_database() as url:
        config = load_config(write_config(f'[store]\nurl = "{url}"\n' + HTTP_DETECTOR, name="pg.toml"))
        pg_runtime = build_runtime(config, CollectorRegistry(), with_process_metrics=False)
        try:
            populate(pg_runtime)
            yield schemathesis.openapi.from_asgi("/openapi.json", create_app(pg_runtime, manage_jobs=False)), pg_runtime
        finally:
            pg_runtime.vigil.repo.dispose()


def with_nul(case: schemathesis.Case) -> schemathesis.Case:
    """The case with a NUL character in every string of its query and JSON body (PostgreSQL text refuses it)."""
    def poison(value: Any) -> Any:
        if isinstance(value, str):
            return value + "\x00"
        if isinstance(value, dict):
            return {k: poison(v) for k, v in value.items()}
        return [poison(v) for v in value] if isinstance(value, list) else value
    if case.query:
        case.query = poison(case.query)
    if isinstance(case.body, dict):
        case.body = poison(case.body)
    return case


def case_strategies(operation: APIOperation) -> st.SearchStrategy[schemathesis.Case]:
    """Valid and invalid parameters; with a `name` path parameter, also valid ones naming the `web` detector;
    valid ones with NUL characters in their strings."""
    modes = [schemathesis.GenerationMode.POSITIVE]
    if operation.path_parameters or operation.query:
        modes.append(schemathesis.GenerationMode.NEGATIVE)
    strategies = [operation.as_strategy(mode) for mode in modes]
    named = {"name": "web"} if any(p.name == "name" for p in operation.path_parameters) else None
    if named:
        strategies.append(operation.as_strategy(path_parameters=named))
    strategies.append(operation.as_strategy(path_parameters=named).map(with_nul))
    return st.one_of(strategies)


# schemathesis.pytest.from_fixture + @schema.parametrize() would give one test per operation, but its lazy loader
# reads `request.node._nodeid`, which pytest 9 no longer has; so one test walks the operations, each a subtest.
def test_no_operation_answers_a_server_error(fuzzed: tuple[OpenApiSchema, Runtime],
                                             subtests: pytest.Subtests) -> None:
    """Every operation, with valid and invalid parameters, the bearer token sent: never a 5xx."""
    api_schema, runtime = fuzzed
    headers = {"Authorization": f"Bearer {runtime.token}"}
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @FUZZ
        @given(case=case_strategies(operation))
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        with subtests.test(msg=operation.label):
            fuzz()
    assert set(labels) >= {"POST /v1/detectors/{name}/records", "GET /v1/status", "GET /v1/outliers",
                           "GET /v1/detectors/{name}/rejects", "GET /v1/models", "GET /healthz"}, labels


# --- the ingest body ----------------------------------------------------------------------------------------

huge = st.integers(min_value=-(10**400), max_value=10**400)
scalars = (st.none() | st.booleans() | st.integers() | huge
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
timestamps = (st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
              | st.integers(min_value=-(10**13), max_value=10**13) | st.floats() | st.text(max_size=30)
              | st.sampled_from(["2025-03-03T10:00:00Z", "2025-03-03", "0001-01-01T00:00:00+05:00", "now", ""]))
feature_values = (st.floats(allow_nan=True, allow_infinity=True) | st.integers() | huge
                  | st.booleans() | st.none() | st.sampled_from(REGIONS) | st.text(max_size=10) | json_values)
keys = st.text(max_size=300) | st.integers() | st.booleans() | st.none() | st.sampled_from(["web-1", "web-2"])


@st.composite
def records(draw: st.DrawFn) -> Any:
    """Mostly record-shaped objects (flat or nested) with any mix of good and bad values, or anything else."""
    shape = draw(st.sampled_from(["flat", "flat", "nested", "any"]))
    if shape == "any":
        return draw(json_values)
    fields = draw(st.dictionaries(st.sampled_from(FEATURES) | st.text(max_size=8), feature_values, max_size=8))
    for name in draw(st.sets(st.sampled_from(FEATURES))):
        fields[name] = draw(st.floats(0, 100) if name in ("load", "cpu", "latency")
                            else st.sampled_from(REGIONS) if name == "region" else st.booleans())
    head: dict[str, Any] = {}
    if draw(st.booleans()):
        head["ts"] = draw(timestamps)
    if draw(st.booleans()):
        head["host"] = draw(keys)
    return {**head, "fields": fields} if shape == "nested" else {**head, **fields}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


CONTENT_TYPES = st.sampled_from(["application/json", "application/x-ndjson", "application/jsonl", "text/plain", ""])
bodies = st.one_of(
    st.tuples(st.lists(records(), max_size=6).map(_dumps), CONTENT_TYPES),            # a JSON array
    st.tuples(records().map(_dumps), CONTENT_TYPES),                                   # one value
    st.tuples(st.lists(records() | json_values, max_size=6).map(
        lambda items: b"\n".join(map(_dumps, items))), CONTENT_TYPES),                 # NDJSON
    st.tuples(st.lists(st.binary(max_size=40) | records().map(_dumps), max_size=5).map(
        b"\n".join), CONTENT_TYPES),                                                   # NDJSON with junk lines
    st.tuples(st.binary(max_size=200), CONTENT_TYPES),                                 # bytes
)


def check_answer(status: int, payload: Any) -> None:
    assert status < 500, payload
    if status in (200, 422):
        assert set(payload) >= {"accepted", "rejected"}, payload
        assert isinstance(payload["accepted"], int) and payload["accepted"] >= 0
        for rejection in payload["rejected"]:
            assert {"index", "field", "reason", "message"} <= set(rejection)
    else:
        assert status in (400, 413), (status, payload)
        assert isinstance(payload["error"], str)


@pytest.fixture
def ingest(store_url: str, write_config: Callable[..., Path]) -> Iterator[tuple[TestClient, Runtime]]:
    """The app over a runtime on each store back end (a SQLite file, a throw-away PostgreSQL database):
    PostgreSQL refuses text SQLite takes (NUL characters, lone surrogates)."""
    config = load_config(write_config(f'[store]\nurl = "{store_url}"\n' + HTTP_DETECTOR))
    runtime = build_runtime(config, CollectorRegistry(), with_process_metrics=False)
    try:
        with TestClient(create_app(runtime, manage_jobs=False), raise_server_exceptions=False) as test_client:
            yield test_client, runtime
    finally:
        runtime.vigil.repo.dispose()


@FUZZ
@given(body=bodies)
@example(body=(b"[" * 100_000 + b"]" * 100_000, "application/json"))                 # nesting past recursion
@example(body=(b'{"a": ' * 5000 + b"1" + b"}" * 5000, "application/x-ndjson"))
@example(body=(b'[{"host": "\\ud800", "load": 1, "cpu": 1, "latency": 1, "region": "a"}]', "application/json"))
@example(body=(b'[{"\\udfff": [1], "load": 1, "cpu": 1, "latency": 1, "region": "a"}]', "application/json"))
@example(body=(b'[{"load": 1e400, "cpu": -1e400, "latency": 1, "region": "\\ud83d"}]', "application/json"))
@example(body=(b'[{"host": "a\\u0000", "load": 1, "cpu": 1, "latency": 1, "region": "a\\u0000b"}]', ""))
@example(body=(b'[{"load": 1, "cpu": 1, "latency": 1, "region": "a", "note": "\\u0000", "x\\u0000": 1}]', ""))
@example(body=(b'[{"load": 1' + b"0" * 400 + b', "cpu": 1, "latency": 1, "region": "a"}]', "application/json"))
@example(body=(b'\x00\n{"load": 1}\n\x00{', "application/x-ndjson"))
@example(body=(b"\xff\xfe\x00", "application/json"))
@example(body=(b"", "application/x-ndjson"))
def test_ingest_never_answers_a_server_error(ingest: tuple[TestClient, Runtime], body: tuple[bytes, str]) -> None:
    """Any body: 200 or 422 with accepted/rejected, 400 or 413 with an error, never a 5xx."""
    client, runtime = ingest
    content, content_type = body
    headers = {"Authorization": f"Bearer {runtime.token}"}
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post(URL, content=content, headers=headers)
    assert response.status_code < 500, (body, response.text)
    check_answer(response.status_code, response.json())


@FUZZ
@given(batch=st.lists(records(), min_size=1, max_size=8))
def test_every_record_of_a_batch_is_accepted_or_rejected_once(ingest: tuple[TestClient, Runtime],
                                                              batch: list[Any]) -> None:
    """The answer accounts for every record: accepted + rejected = sent, each rejection naming its index."""
    client, runtime = ingest
    before = runtime.vigil.repo.counts().get("web")
    response = client.post(URL, content=_dumps(batch), headers={"Authorization": f"Bearer {runtime.token}",
                                                                "Content-Type": "application/json"})
    payload = response.json()
    check_answer(response.status_code, payload)
    assert response.status_code == (422 if payload["rejected"] else 200)
    indexes = [r["index"] for r in payload["rejected"]]
    assert len(set(indexes)) == len(indexes) and all(0 <= i < len(batch) for i in indexes)
    assert payload["accepted"] + len(indexes) == len(batch)
    after = runtime.vigil.repo.counts()["web"]
    stored = after.pending - (before.pending if before else 0)
    rejected = after.rejected - (before.rejected if before else 0)
    assert (stored, rejected) == (payload["accepted"], len(indexes))


def test_fuzz_bodies_include_nan_literals() -> None:
    """The body serialiser writes NaN/Infinity literals (so validation, not parsing, must handle them)."""
    assert _dumps([{"cpu": math.nan, "load": -math.inf}]) == b'[{"cpu": NaN, "load": -Infinity}]'


@pytest.mark.parametrize(("method", "url", "kwargs"), [
    ("get", "/v1/outliers", {"params": {"since": "0001-01-01T00:00:00+14:00"}}),
    ("get", "/v1/outliers", {"params": {"until": "9999-12-31T23:59:59-14:00"}}),
    ("get", "/v1/outliers", {"params": {"key": "web\x001"}}),
    ("get", "/v1/outliers.csv", {"params": {"key": "\x00"}}),
    ("post", "/v1/detectors/web/maintenance",
     {"json": {"start": "2025-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z", "reason": "a\x00"}}),
])
def test_values_the_store_refuses_are_client_errors(ingest: tuple[TestClient, Runtime], method: str, url: str,
                                                    kwargs: dict[str, Any]) -> None:
    """A value the database or its driver cannot take (NUL in PostgreSQL text, a time that overflows in UTC) is
    the request's fault: 2xx or 422, never 503 "store unavailable" (retried for ever) nor a store error."""
    client, runtime = ingest
    response = getattr(client, method)(url, headers={"Authorization": f"Bearer {runtime.token}"}, **kwargs)
    assert response.status_code < 300 or response.status_code == 422, response.text
    assert "Retry-After" not in response.headers
    assert runtime.vigil.metrics.errors.labels("store")._value.get() == 0
