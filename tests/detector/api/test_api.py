"""The HTTP API on the real FastAPI app and a real SQLite file: ingestion, rejections, status, outliers, metrics."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from detector.api.app import create_app
from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from tests.detector.conftest import HTTP_DETECTOR
from tests.support.config import heading, write_config_file
from tests.support.prom import metric

URL = "/v1/detectors/web/records"
START = datetime(2025, 3, 3, tzinfo=UTC)
REGIONS = ("eu-west", "us-east", "ap-south")

DEMO_DETECTOR = """
[detectors.demo]
source = { type = "demo", hosts = 2, history = "1h", seed = 3 }
key_field = "host"

[detectors.demo.features]
request_rate = "numeric"
cpu_pct = "numeric"
"""


def normal_records(n: int, seed: int = 0, start: datetime = START) -> list[dict[str, Any]]:
    """Normal web records: cpu and latency follow load; one record a minute over four hosts."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        load = float(rng.uniform(0.2, 1.0))
        out.append({
            "ts": (start + timedelta(minutes=i)).isoformat(),
            "host": f"web-{i % 4}",
            "load": round(load, 4),
            "cpu": round(10 + 70 * load + float(rng.normal(0, 2)), 3),
            "latency": round(40 + 120 * load + float(rng.normal(0, 4)), 3),
            "region": REGIONS[i % 3],
            "healthy": True,
        })
    return out


def anomalous_records(n: int, start: datetime) -> list[dict[str, Any]]:
    """CPU pegged and latency ten times normal at low load: far from anything normal."""
    return [
        {"ts": (start + timedelta(minutes=i)).isoformat(), "host": "web-0", "load": 0.3, "cpu": 99.0,
         "latency": 1500.0 + 10 * i, "region": "eu-west", "healthy": False}
        for i in range(n)
    ]


def web_status(client: TestClient) -> dict[str, Any]:
    response = client.get("/v1/status")
    assert response.status_code == 200
    status: dict[str, Any] = response.json()["detectors"]["web"]
    return status


def post_raw(client: TestClient, auth: dict[str, str], body: bytes,
             content_type: str = "application/json", path: str = URL) -> Any:
    return client.post(path, content=body, headers={**auth, "Content-Type": content_type})


# --- a config with small body and batch limits and a demo detector beside the http one ---------------------


@pytest.fixture
def limited_runtime(tmp_path: Path) -> Runtime:
    path = write_config_file(tmp_path / "limited.toml",
                             heading(state_dir="limited-state", http={"max_body_bytes": 2000, "max_batch_records": 5}),
                             HTTP_DETECTOR, DEMO_DETECTOR)
    config = load_config(path)
    assert config.http.max_body_bytes == 2000
    return build_runtime(config, CollectorRegistry(), with_process_metrics=False)


@pytest.fixture
def limited(limited_runtime: Runtime) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with TestClient(create_app(limited_runtime, manage_jobs=False)) as test_client:
        yield test_client, {"Authorization": f"Bearer {limited_runtime.token}"}


# --- accepted bodies ------------------------------------------------------------------------------------------


def test_json_array_is_accepted_and_stored_pending(client: TestClient, auth: dict[str, str]) -> None:
    records = normal_records(7)
    response = client.post(URL, json=records, headers=auth)
    assert response.status_code == 200
    assert response.json() == {"accepted": 7, "rejected": []}
    status = web_status(client)
    assert status["records"] == {"pending": 7, "scored": 0, "rejected": 0}


def test_ndjson_body_is_accepted(client: TestClient, auth: dict[str, str]) -> None:
    body = "\n".join(json.dumps(r) for r in normal_records(5)) + "\n"
    response = post_raw(client, auth, body.encode(), "application/x-ndjson")
    assert response.status_code == 200
    assert response.json() == {"accepted": 5, "rejected": []}
    assert web_status(client)["records"]["pending"] == 5


def test_ndjson_sent_as_json_is_recognised(client: TestClient, auth: dict[str, str]) -> None:
    body = "\n".join(json.dumps(r) for r in normal_records(3))
    response = post_raw(client, auth, body.encode(), "application/json")
    assert response.status_code == 200
    assert response.json() == {"accepted": 3, "rejected": []}


def test_single_object_is_accepted(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(URL, json=normal_records(1)[0], headers=auth)
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "rejected": []}
    assert web_status(client)["records"]["pending"] == 1


def test_pretty_printed_single_object_is_one_record(client: TestClient, auth: dict[str, str]) -> None:
    """A JSON object spread over several lines (`json.dumps(indent=2)`, `jq .`) is still one JSON document."""
    body = json.dumps(normal_records(1)[0], indent=2).encode()
    response = post_raw(client, auth, body)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "rejected": []}


def test_stored_record_keeps_key_time_and_extra_fields(runtime: Runtime, client: TestClient,
                                                       auth: dict[str, str]) -> None:
    record = {**normal_records(1)[0], "build": "abc123"}
    assert client.post(URL, json=[record], headers=auth).status_code == 200
    [stored] = runtime.vigil.repo.training_window("web", START - timedelta(days=1), 10)
    assert stored.key == "web-0"
    assert stored.ts == START
    assert stored.fields["build"] == "abc123"
    assert stored.fields["load"] == record["load"]


# --- authentication -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer"},
], ids=["no-header", "wrong-token", "basic-scheme", "empty-bearer"])
def test_writes_need_the_bearer_token(client: TestClient, runtime: Runtime, headers: dict[str, str]) -> None:
    response = client.post(URL, json=normal_records(3), headers=headers)
    assert response.status_code == 401
    assert response.headers.get("www-authenticate") == "Bearer"
    assert web_status(client)["records"] == {"pending": 0, "scored": 0, "rejected": 0}
    assert runtime.vigil.repo.list_rejects("web") == []


def test_token_without_scheme_is_refused(client: TestClient, runtime: Runtime) -> None:
    response = client.post(URL, json=normal_records(1), headers={"Authorization": runtime.token})
    assert response.status_code == 401
    assert web_status(client)["records"]["pending"] == 0


# --- rejected records: the bad ones are named, the good ones of the batch are stored --------------------------


GOOD = json.dumps(normal_records(1)[0])


def _with(replace: str) -> str:
    """A record whose fields after `ts` and `host` are given as raw JSON text (NaN allowed)."""
    return '{"ts": "2025-03-03T00:00:00Z", "host": "web-1", ' + replace + "}"


BAD_RECORDS = {
    "missing-field": (_with('"load": 0.5, "cpu": 40, "region": "eu-west"'), "latency", "missing_field"),
    "null-field": (_with('"load": 0.5, "cpu": 40, "latency": null, "region": "eu-west"'), "latency",
                   "missing_field"),
    "wrong-type-string": (_with('"load": "high", "cpu": 40, "latency": 90, "region": "eu-west"'), "load",
                          "wrong_type"),
    "wrong-type-bool-as-number": (_with('"load": true, "cpu": 40, "latency": 90, "region": "eu-west"'), "load",
                                  "wrong_type"),
    "wrong-type-category": (_with('"load": 0.5, "cpu": 40, "latency": 90, "region": 1.5'), "region",
                            "wrong_type"),
    "wrong-type-boolean": (_with('"load": 0.5, "cpu": 40, "latency": 90, "region": "eu-west", "healthy": "yes"'),
                           "healthy", "wrong_type"),
    "nan": (_with('"load": NaN, "cpu": 40, "latency": 90, "region": "eu-west"'), "load", "not_finite"),
    "infinity": (_with('"load": 0.5, "cpu": Infinity, "latency": 90, "region": "eu-west"'), "cpu", "not_finite"),
    "minus-infinity": (_with('"load": 0.5, "cpu": 40, "latency": -Infinity, "region": "eu-west"'), "latency",
                       "not_finite"),
    "bad-timestamp-text": ('{"ts": "yesterday", "host": "web-1", "load": 0.5, "cpu": 40, "latency": 90, '
                           '"region": "eu-west"}', "ts", "bad_timestamp"),
    "bad-timestamp-type": ('{"ts": [2025], "host": "web-1", "load": 0.5, "cpu": 40, "latency": 90, '
                           '"region": "eu-west"}', "ts", "bad_timestamp"),
    "bad-timestamp-overflow": ('{"ts": 1e300, "host": "web-1", "load": 0.5, "cpu": 40, "latency": 90, '
                               '"region": "eu-west"}', "ts", "bad_timestamp"),
    "bad-key": ('{"ts": 0, "host": {"a": 1}, "load": 0.5, "cpu": 40, "latency": 90, "region": "eu-west"}', "host",
                "bad_key"),
    "not-an-object": ("[1, 2]", None, "not_an_object"),
}


@pytest.mark.parametrize("bad,field,reason", list(BAD_RECORDS.values()), ids=list(BAD_RECORDS))
def test_bad_record_is_named_and_the_others_are_stored(client: TestClient, auth: dict[str, str], runtime: Runtime,
                                                       bad: str, field: str | None, reason: str) -> None:
    body = f"[{GOOD}, {bad}, {GOOD}]".encode()
    response = post_raw(client, auth, body)
    assert 400 <= response.status_code < 500
    assert response.status_code == 422
    payload = response.json()
    assert payload["accepted"] == 2
    [rejection] = payload["rejected"]
    assert rejection["index"] == 1
    assert rejection["field"] == field
    assert rejection["reason"] == reason
    assert "record 1" in rejection["message"]
    assert web_status(client)["records"] == {"pending": 2, "scored": 0, "rejected": 1}
    [stored] = runtime.vigil.repo.list_rejects("web")
    assert (stored["index"], stored["field"], stored["reason"]) == (1, field, reason)


def test_several_bad_records_in_one_batch_are_each_named(client: TestClient, auth: dict[str, str]) -> None:
    nan, _, _ = BAD_RECORDS["nan"]
    missing, _, _ = BAD_RECORDS["missing-field"]
    body = f"[{nan}, {GOOD}, {missing}, {GOOD}, {GOOD}]".encode()
    response = post_raw(client, auth, body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["accepted"] == 3
    assert [(r["index"], r["field"], r["reason"]) for r in payload["rejected"]] == [
        (0, "load", "not_finite"), (2, "latency", "missing_field")]
    assert web_status(client)["records"]["pending"] == 3


def test_nan_in_an_extra_field_is_stored_as_null(client: TestClient, auth: dict[str, str], runtime: Runtime) -> None:
    body = ("[" + GOOD[:-1] + ', "note": NaN}]').encode()
    response = post_raw(client, auth, body)
    assert response.status_code == 200, response.text
    [stored] = runtime.vigil.repo.training_window("web", START - timedelta(days=1), 10)
    assert stored.fields["note"] is None


def test_malformed_json_is_400_and_stores_nothing(client: TestClient, auth: dict[str, str],
                                                  runtime: Runtime) -> None:
    response = post_raw(client, auth, b'[{"load": 0.5,')
    assert response.status_code == 400
    payload = response.json()
    assert payload["accepted"] == 0
    [rejection] = payload["rejected"]
    assert rejection["reason"] == "malformed"
    assert rejection["index"] is None
    assert web_status(client)["records"] == {"pending": 0, "scored": 0, "rejected": 1}
    [stored] = runtime.vigil.repo.list_rejects("web")
    assert stored["reason"] == "malformed"


@pytest.mark.parametrize("body", [b"", b"   ", b"\xff\xfe[]", b"not json"], ids=["empty", "blank", "not-utf8", "text"])
def test_unreadable_bodies_are_malformed(client: TestClient, auth: dict[str, str], body: bytes) -> None:
    response = post_raw(client, auth, body)
    assert response.status_code == 400
    assert response.json()["rejected"][0]["reason"] == "malformed"
    assert web_status(client)["records"]["pending"] == 0


def test_malformed_ndjson_line_is_named_and_the_other_lines_are_stored(client: TestClient,
                                                                       auth: dict[str, str]) -> None:
    lines = [GOOD, '{"load": 0.5, "cpu":', GOOD]
    response = post_raw(client, auth, "\n".join(lines).encode(), "application/x-ndjson")
    assert response.status_code == 422
    payload = response.json()
    assert payload["accepted"] == 2
    assert [(r["index"], r["reason"]) for r in payload["rejected"]] == [(1, "malformed")]
    assert web_status(client)["records"] == {"pending": 2, "scored": 0, "rejected": 1}


def test_empty_array_accepts_nothing(client: TestClient, auth: dict[str, str]) -> None:
    response = post_raw(client, auth, b"[]")
    assert response.status_code == 200
    assert response.json() == {"accepted": 0, "rejected": []}


# --- limits, unknown detectors, detectors that do not take HTTP -----------------------------------------------


def test_oversized_body_is_413_too_large(limited: tuple[TestClient, dict[str, str]],
                                         limited_runtime: Runtime) -> None:
    client, auth = limited
    body = json.dumps(normal_records(4) * 5).encode()
    assert len(body) > 2000
    response = post_raw(client, auth, body)
    assert response.status_code == 413
    payload = response.json()
    assert payload["accepted"] == 0
    assert [r["reason"] for r in payload["rejected"]] == ["too_large"]
    assert "2000" in payload["rejected"][0]["message"]
    assert web_status(client)["records"] == {"pending": 0, "scored": 0, "rejected": 1}


def test_oversized_chunked_body_without_length_is_413(limited: tuple[TestClient, dict[str, str]]) -> None:
    """No Content-Length to trust: the limit is enforced while the body streams in."""
    client, auth = limited
    chunk = json.dumps(normal_records(1)[0]).encode()

    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(30):
            yield chunk + b","
        yield chunk + b"]"

    response = client.post(URL, content=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["rejected"][0]["reason"] == "too_large"
    assert web_status(client)["records"]["pending"] == 0


def test_body_within_limit_is_accepted(limited: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = limited
    body = json.dumps(normal_records(5)).encode()
    assert len(body) <= 2000
    response = post_raw(client, auth, body)
    assert response.status_code == 200
    assert response.json() == {"accepted": 5, "rejected": []}


def test_too_many_records_is_413(limited: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = limited
    compact = [{"load": 0.5, "cpu": 40, "latency": 90, "region": "eu-west"}] * 6
    body = json.dumps(compact).encode()
    assert len(body) <= 2000
    response = post_raw(client, auth, body)
    assert response.status_code == 413
    payload = response.json()
    assert payload["accepted"] == 0
    assert [r["reason"] for r in payload["rejected"]] == ["too_many_records"]
    assert web_status(client)["records"] == {"pending": 0, "scored": 0, "rejected": 1}


def test_unknown_detector_is_404_and_counted(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post("/v1/detectors/nope/records", json=normal_records(2), headers=auth)
    assert response.status_code == 404
    assert "nope" in response.json()["error"]
    text = client.get("/metrics").text
    assert metric(text, "vigil_records_rejected_total", detector="_unknown", reason="unknown_detector") == 1.0
    assert metric(text, "vigil_records_rejected_total", detector="nope", reason="unknown_detector") is None
    assert web_status(client)["records"]["pending"] == 0


def test_detector_with_a_pulled_source_refuses_http_records(limited: tuple[TestClient, dict[str, str]],
                                                            limited_runtime: Runtime) -> None:
    client, auth = limited
    response = client.post("/v1/detectors/demo/records", json=[{"request_rate": 1.0, "cpu_pct": 5.0}],
                           headers=auth)
    assert response.status_code == 409
    assert "demo" in response.json()["error"]
    demo = client.get("/v1/status").json()["detectors"]["demo"]
    assert demo["records"] == {"pending": 0, "scored": 0, "rejected": 0}


# --- counters and the reject log ------------------------------------------------------------------------------


def test_metrics_count_ingested_and_rejected_by_reason(limited: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = limited
    nan, _, _ = BAD_RECORDS["nan"]
    infinity, _, _ = BAD_RECORDS["infinity"]
    missing, _, _ = BAD_RECORDS["missing-field"]
    wrong, _, _ = BAD_RECORDS["wrong-type-string"]
    stamp, _, _ = BAD_RECORDS["bad-timestamp-text"]
    assert post_raw(client, auth, json.dumps(normal_records(3)).encode()).status_code == 200
    assert post_raw(client, auth, f"[{GOOD}, {nan}, {infinity}]".encode()).status_code == 422
    assert post_raw(client, auth, f"[{missing}, {wrong}, {stamp}, {GOOD}]".encode()).status_code == 422
    assert post_raw(client, auth, b"{oops").status_code == 400
    assert post_raw(client, auth, b"[" + b" " * 3000 + b"]").status_code == 413
    assert post_raw(client, auth, json.dumps([{}] * 6).encode()).status_code == 413
    assert client.post("/v1/detectors/nope/records", json=[], headers=auth).status_code == 404
    assert client.post("/v1/detectors/nope/records", json=[], headers=auth).status_code == 404
    assert client.post(URL, json=normal_records(2), headers={}).status_code == 401

    text = client.get("/metrics").text
    assert metric(text, "vigil_records_ingested_total", detector="web", source="http") == 5.0
    expected = {"not_finite": 2, "missing_field": 1, "wrong_type": 1, "bad_timestamp": 1, "malformed": 1,
                "too_large": 1, "too_many_records": 1}
    for reason, count in expected.items():
        assert metric(text, "vigil_records_rejected_total", detector="web", reason=reason) == count, reason
    assert metric(text, "vigil_records_rejected_total", detector="_unknown", reason="unknown_detector") == 2.0
    assert metric(text, "vigil_records", detector="web", state="pending") == 5.0
    assert metric(text, "vigil_records", detector="demo", state="pending") == 0.0

    status = web_status(client)
    assert status["records"] == {"pending": 5, "scored": 0, "rejected": 8}

    rejects = client.get("/v1/detectors/web/rejects").json()["rejects"]
    assert len(rejects) == 8
    assert sorted(r["reason"] for r in rejects) == sorted(
        ["not_finite", "not_finite", "missing_field", "wrong_type", "bad_timestamp", "malformed", "too_large",
         "too_many_records"])
    assert all(r["message"] and r["source"] == "http" for r in rejects)
    by_reason = {r["reason"]: r for r in rejects}
    assert by_reason["missing_field"]["field"] == "latency"
    assert "record 0" in by_reason["missing_field"]["message"]
    assert by_reason["bad_timestamp"]["index"] == 2
    assert by_reason["malformed"]["index"] is None
    assert [r["id"] for r in rejects] == sorted((r["id"] for r in rejects), reverse=True)
    limited_two = client.get("/v1/detectors/web/rejects", params={"limit": 2}).json()["rejects"]
    assert [r["id"] for r in limited_two] == [r["id"] for r in rejects[:2]]
    assert client.get("/v1/detectors/nope/rejects").status_code == 404


# --- status, training, scoring, outliers, models --------------------------------------------------------------


def test_status_before_any_model(client: TestClient, auth: dict[str, str]) -> None:
    assert client.post(URL, json=normal_records(12), headers=auth).status_code == 200
    status = web_status(client)
    assert status["source"] == "http"
    assert status["records"] == {"pending": 12, "scored": 0, "rejected": 0}
    assert status["outliers"] == 0
    assert status["model"] is None
    assert status["last_training"] is None
    assert client.get("/v1/models").json() == {"models": []}
    assert client.get("/v1/outliers").json() == {"outliers": [], "total": 0, "limit": 50, "offset": 0}
    assert metric(client.get("/metrics").text, "vigil_model_info", detector="web", version="1") is None


def test_first_model_becomes_due_at_min_records(client: TestClient, auth: dict[str, str],
                                                runtime: Runtime) -> None:
    """The score job starts the first training once the window holds min_records (200 here)."""
    trainer = runtime.trainer
    assert not trainer.ready_for_first_model("web")             # empty store
    assert client.post(URL, json=normal_records(199), headers=auth).status_code == 200
    assert not trainer.ready_for_first_model("web")
    outcome = trainer.train("web", "first")
    assert outcome.result == "skipped"
    assert "min_records=200" in outcome.message
    runtime.score_job("web")                                      # no model yet: scores nothing
    assert web_status(client)["records"]["pending"] == 199
    assert web_status(client)["last_training"]["result"] == "skipped"

    more = normal_records(1, seed=1, start=START + timedelta(minutes=199))
    assert client.post(URL, json=more, headers=auth).status_code == 200
    assert trainer.ready_for_first_model("web")
    assert trainer.train("web", "first").result == "success"
    assert not trainer.ready_for_first_model("web")              # a model exists now
    runtime.score_job("web")
    assert web_status(client)["records"] == {"pending": 0, "scored": 200, "rejected": 0}


@pytest.fixture
def trained(client: TestClient, auth: dict[str, str], runtime: Runtime) -> Callable[[list[dict[str, Any]]], int]:
    """Train v1 on 300 normal records, then a function that ingests records and scores them."""
    assert client.post(URL, json=normal_records(300), headers=auth).status_code == 200
    outcome = runtime.trainer.train("web", "first")
    assert outcome.result == "success", outcome.message

    def ingest_and_score(records: list[dict[str, Any]]) -> int:
        """POST `records`, let the score job score what waits; how many records were scored (on ingest or after)."""
        before = runtime.vigil.repo.counts()["web"].scored
        assert client.post(URL, json=records, headers=auth).status_code == 200
        runtime.scorer.score("web")
        return runtime.vigil.repo.counts()["web"].scored - before

    return ingest_and_score


def test_status_after_training_and_scoring(client: TestClient, runtime: Runtime,
                                           trained: Callable[[list[dict[str, Any]]], int]) -> None:
    assert runtime.scorer.score("web") == 300
    status = web_status(client)
    assert status["records"] == {"pending": 0, "scored": 300, "rejected": 0}
    assert status["model"]["version"] == 1
    assert status["model"]["n_records"] == 300
    assert status["model"]["threshold"] > 0
    assert 0 < status["model"]["expected_outlier_rate"] < 0.1
    assert status["last_training"]["result"] == "success"
    assert status["last_training"]["trigger"] == "first"
    assert status["last_training"]["model_version"] == 1
    assert status["outliers"] <= 30                               # ~1 % target false-positive rate

    text = client.get("/metrics").text
    assert metric(text, "vigil_model_info", detector="web", version="1") == 1.0
    assert metric(text, "vigil_training_runs_total", detector="web", result="success") == 1.0
    assert metric(text, "vigil_records_scored_total", detector="web") == 300.0
    assert metric(text, "vigil_outliers_total", detector="web") == float(status["outliers"])
    assert metric(text, "vigil_threshold", detector="web") == pytest.approx(status["model"]["threshold"])
    assert metric(text, "vigil_records", detector="web", state="scored") == 300.0


def test_outliers_are_explained(client: TestClient, runtime: Runtime,
                                trained: Callable[[list[dict[str, Any]]], int]) -> None:
    runtime.scorer.score("web")
    before = {o["id"] for o in client.get("/v1/outliers", params={"limit": 1000}).json()["outliers"]}
    later = START + timedelta(days=1)
    assert trained(normal_records(40, seed=5, start=later) + anomalous_records(5, later)) == 45

    outliers = client.get("/v1/outliers", params={"detector": "web", "limit": 1000, "sort": "id"}).json()["outliers"]
    new = [o for o in outliers if o["id"] not in before]
    injected = [o for o in new if o["fields"]["cpu"] == 99.0]
    assert len(injected) == 5
    assert len(new) - len(injected) <= 3
    for o in outliers:
        assert o["detector"] == "web"
        assert o["score"] > o["threshold"]
        assert o["model_version"] == 1
        assert o["review_state"] == "unreviewed"
        assert set(o["expected"]) >= {"load", "cpu", "latency", "region"}
        assert 1 <= len(o["contributions"]) <= 5
        for c in o["contributions"]:
            assert {"feature", "actual", "expected", "share"} <= set(c)
        shares = [c["share"] for c in o["contributions"]]
        assert shares == sorted(shares, reverse=True)
        assert sum(shares) <= 1.0 + 1e-6
    for o in injected:
        top = o["contributions"][0]
        assert top["feature"] in ("cpu", "latency")
        assert top["actual"] == o["fields"][top["feature"]]
        assert top["expected"] < top["actual"] / 2               # the model expects far less at this load
        assert o["expected"]["latency"] < 500
        assert o["key"] == "web-0"
    assert [o["id"] for o in outliers] == sorted((o["id"] for o in outliers), reverse=True)

    since = client.get("/v1/outliers", params={"since": later.isoformat(), "limit": 1000}).json()["outliers"]
    assert {o["id"] for o in since} == {o["id"] for o in new}
    assert len(client.get("/v1/outliers", params={"limit": 2}).json()["outliers"]) == 2
    assert client.get("/v1/outliers", params={"detector": "nope"}).status_code == 404
    assert client.get("/v1/outliers", params={"limit": 0}).status_code == 422


def test_models_list_the_active_version(client: TestClient, trained: Callable[[list[dict[str, Any]]], int]) -> None:
    models = client.get("/v1/models").json()["models"]
    assert len(models) == 1
    [model] = models
    assert (model["detector"], model["version"], model["status"], model["n_records"]) == ("web", 1, "active", 300)
    assert model["threshold"] > 0
    assert model["window_start"] == START.isoformat()
    assert model["window_end"] == (START + timedelta(minutes=299)).isoformat()
    assert "history" not in model["report"]
    assert client.get("/v1/models", params={"detector": "other"}).json() == {"models": []}


# --- documentation and health ---------------------------------------------------------------------------------


def test_openapi_documents_the_api(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "post" in paths["/v1/detectors/{name}/records"]
    for path in ("/v1/status", "/v1/outliers", "/v1/models", "/v1/detectors/{name}/rejects", "/healthz"):
        assert "get" in paths[path], path
    assert "/metrics" not in paths


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_metrics_endpoint_is_prometheus_text(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert metric(response.text, "vigil_records", detector="web", state="pending") == 0.0
