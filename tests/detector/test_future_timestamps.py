"""One record timed far in the future must not stop training (issue 28, finding 1): such records are refused
as `bad_timestamp` beyond `max_future`, the training window ends at the newest record or now, whichever is
earlier, and a window too short to train is reported once: a log line, a skipped run, a metric."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.errors import ConfigError
from detector.records import ValidRecord
from detector.store.db import open_engine
from tests.detector.conftest import HTTP_DETECTOR
from tests.support.prom import metric
from tests.support.web import normal_records

URL = "/v1/detectors/web/records"
FAR_FUTURE = "9999-12-31T23:59:59Z"


def recent(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` normal records, one a minute, ending about an hour ago."""
    return normal_records(n, seed, datetime.now(UTC) - timedelta(minutes=n + 60))


def test_a_far_future_record_is_refused_and_the_batch_goes_on(client: TestClient, auth: dict[str, str],
                                                              runtime: Runtime) -> None:
    records = recent(2000)
    records.insert(1234, dict(records[0], ts=FAR_FUTURE))
    answer = client.post(URL, json=records, headers=auth)
    assert answer.status_code == 422, answer.text       # some records refused: the others are stored
    body = answer.json()
    assert body["accepted"] == 2000
    [refused] = body["rejected"]
    assert (refused["index"], refused["field"], refused["reason"]) == (1234, "ts", "bad_timestamp")
    assert refused["message"].startswith("record 1234: field 'ts': 9999-12-31T23:59:59+00:00 is ")
    assert "ahead of the time the record was received" in refused["message"]
    assert "max_future = 1 h" in refused["message"]
    assert runtime.vigil.repo.latest_ts("web") < datetime.now(UTC)
    assert runtime.trainer.ready_for_first_model("web")


@pytest.mark.parametrize("ahead, accepted", [(timedelta(minutes=50), True), (timedelta(minutes=70), False)])
def test_max_future_is_the_tolerance(client: TestClient, auth: dict[str, str], ahead: timedelta,
                                     accepted: bool) -> None:
    """Default 1 h: a clock a little ahead is fine; the ISO fast path and the per-record path agree."""
    ts = datetime.now(UTC) + ahead
    for form in (ts.isoformat(), ts.timestamp(), ts.strftime("%Y-%m-%dT%H:%M:%SZ")):
        body = client.post(URL, json=[dict(recent(1)[0], ts=form)], headers=auth).json()
        assert body["accepted"] == (1 if accepted else 0), (form, body)


def test_max_future_is_configurable(write_config: Callable[..., Path], tmp_path: Path) -> None:
    config = load_config(write_config(HTTP_DETECTOR.replace('key_field = "host"',
                                                            'key_field = "host"\nmax_future = "2d"')))
    assert config.detectors["web"].max_future == 2 * 86400
    runtime = build_runtime(config, CollectorRegistry(), with_process_metrics=False)
    ahead = dict(recent(1)[0], ts=(datetime.now(UTC) + timedelta(days=1)).isoformat())
    assert runtime.vigil.ingest("web", [ahead], "http").accepted == 1
    for bad in ('"0s"', '"soon"', "-5"):
        with pytest.raises(ConfigError, match="max_future"):
            load_config(write_config(HTTP_DETECTOR.replace('key_field = "host"',
                                                           f'key_field = "host"\nmax_future = {bad}'),
                                     name="bad.toml"))


def test_a_future_record_already_stored_does_not_empty_the_window(runtime: Runtime) -> None:
    """A record stored ahead of now (before this limit existed, or within a larger max_future) leaves the
    window anchored at now: the first model trains on the 2,000 normal records."""
    vigil = runtime.vigil
    assert vigil.ingest("web", recent(2000), "http").accepted == 2000
    future = ValidRecord(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), "web-0",
                         {"load": 0.5, "cpu": 45.0, "latency": 100.0, "region": "eu-west", "healthy": True})
    vigil.repo.add_batch("web", "http", [future], [])
    assert vigil.repo.latest_ts("web") == future.ts
    assert runtime.trainer.ready_for_first_model("web")
    outcome = runtime.trainer.train("web", "first")
    assert outcome.result == "success", outcome.message
    assert outcome.model is not None and outcome.model.n_records == 2001


def test_a_short_window_is_reported_once_per_change(client: TestClient, auth: dict[str, str], runtime: Runtime,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The score job looks every second; the first look at a short window logs it, records a skipped run
    that status shows, and sets vigil_training_blocked; later looks add nothing until the reason changes."""
    def blocked(reason: str) -> float | None:
        return metric(client.get("/metrics").text, "vigil_training_blocked", detector="web", reason=reason)

    def runs() -> list[Any]:
        return runtime.vigil.repo.list_training_runs("web")

    caplog.set_level(logging.INFO, logger="detector.trainer")
    assert blocked("empty_window") == 0 and blocked("too_few_records") == 0
    for _ in range(3):
        runtime.score_job("web")
    [empty] = runs()
    assert (empty.result, empty.trigger) == ("skipped", "first")
    assert empty.message == "no records yet: training needs min_records=200"
    assert blocked("empty_window") == 1

    assert client.post(URL, json=recent(50), headers=auth).status_code == 200
    for _ in range(3):
        runtime.score_job("web")
    starved, _ = runs()
    assert starved.result == "skipped" and starved.n_records == 50
    assert starved.message is not None and starved.message.startswith("window holds 50 records (since ")
    assert starved.message.endswith("training needs min_records=200")
    assert (blocked("empty_window"), blocked("too_few_records")) == (0, 1)
    status = client.get("/v1/status").json()["detectors"]["web"]["last_training"]
    assert (status["result"], status["message"]) == ("skipped", starved.message)
    warnings = [r for r in caplog.records if r.getMessage() == "training window too short: no model can be trained"]
    assert [(r.levelname, getattr(r, "reason", None)) for r in warnings] == [
        ("WARNING", "empty_window"), ("WARNING", "too_few_records")]

    assert client.post(URL, json=recent(200, seed=1), headers=auth).status_code == 200
    assert runtime.trainer.ready_for_first_model("web")
    assert (blocked("empty_window"), blocked("too_few_records")) == (0, 0)
    assert len(runs()) == 2
    assert any(r.getMessage() == "training window holds enough records again" for r in caplog.records)


def test_a_scheduled_run_on_a_short_window_sets_the_metric(client: TestClient, auth: dict[str, str],
                                                           runtime: Runtime) -> None:
    """With a model, the window can still run short (the source went quiet): the skipped run says so, and so
    does the metric, until a run finds enough records again."""
    assert client.post(URL, json=recent(300), headers=auth).status_code == 200
    assert runtime.trainer.train("web", "first").result == "success"
    engine = open_engine(runtime.config.store_url)      # the store keeps too few records in the window
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM records WHERE id > 20"))
    engine.dispose()
    outcome = runtime.trainer.train("web", "manual")
    assert (outcome.result, outcome.message) == ("skipped", "window holds 20 records, training needs min_records=200")
    assert metric(client.get("/metrics").text, "vigil_training_blocked", detector="web",
                  reason="too_few_records") == 1
    runtime.score_job("web")        # the first-model look (a model exists) leaves a run's finding alone
    assert metric(client.get("/metrics").text, "vigil_training_blocked", detector="web",
                  reason="too_few_records") == 1
    assert client.post(URL, json=recent(300, seed=2), headers=auth).status_code == 200
    assert runtime.trainer.train("web", "manual").result == "success"
    assert metric(client.get("/metrics").text, "vigil_training_blocked", detector="web",
                  reason="too_few_records") == 0


def test_the_demo_source_is_exempt(write_config: Callable[..., Path]) -> None:
    """The demo's simulated time runs `speed` times faster than the clock, ahead of it by design: its records
    are never refused for being ahead, and its window ends at its newest record."""
    demo = HTTP_DETECTOR.replace('source = { type = "http" }', 'source = { type = "demo", hosts = 2 }')
    runtime = build_runtime(load_config(write_config(demo)), CollectorRegistry(), with_process_metrics=False)
    ahead = datetime.now(UTC) + timedelta(days=3)
    record = dict(recent(1)[0], ts=ahead.isoformat())
    assert runtime.vigil.ingest("web", [record], "demo").accepted == 1
    assert runtime.trainer.window_since("web") == ahead - timedelta(days=30)
