"""The whole loop through a real daemon process: `vigil run` with uvicorn, real HTTP, SQLite, training, scoring."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.prom import metric
from tests.support.web import WebDaemon, injected_records, normal_records, query

pytestmark = pytest.mark.slow

# recent times: the retention job deletes scored, unflagged records older than 7 days (by record time)
START = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)
N_NORMAL = 600
N_INJECTED = 10


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[WebDaemon]:
    with WebDaemon(tmp_path) as d:
        yield d


def _post_in_batches(daemon: WebDaemon, records: list[dict[str, Any]], size: int = 100) -> int:
    accepted = 0
    for i in range(0, len(records), size):
        body = daemon.ingest(records[i:i + size])
        assert body["rejected"] == []
        accepted += body["accepted"]
    return accepted


def test_daemon_learns_flags_and_explains_injected_anomalies(daemon: WebDaemon) -> None:
    daemon.start()
    assert _post_in_batches(daemon, normal_records(N_NORMAL, seed=1, start=START)) == N_NORMAL
    # the score job trains the first model by itself once min_records=300 are in
    daemon.wait_for(daemon.settled, 90, "the first model and every record scored")
    later = START + timedelta(minutes=N_NORMAL)
    assert daemon.ingest(injected_records(N_INJECTED, later))["accepted"] == N_INJECTED
    daemon.wait_for(lambda: daemon.status()["records"]["pending"] == 0, 90, "the injected records to be scored")

    status = daemon.status()
    assert status["model"]["version"] == 1
    assert status["last_training"]["result"] == "success"
    assert status["last_training"]["trigger"] == "first"
    assert status["records"]["scored"] == N_NORMAL + N_INJECTED

    rows = query(daemon.db, "SELECT fields, score, threshold FROM outliers WHERE detector = 'web'")
    kinds = [json.loads(fields)["kind"] for fields, _, _ in rows]
    flagged_injected = kinds.count("injected")
    flagged_normal = kinds.count("normal")
    print(f"e2e: {flagged_injected}/{N_INJECTED} injected flagged, {flagged_normal}/{N_NORMAL} normal flagged")
    assert flagged_injected >= 8
    assert flagged_normal <= 0.03 * N_NORMAL
    assert all(score > threshold for _, score, threshold in rows)
    [(n_records,)] = query(daemon.db, "SELECT count(*) FROM records WHERE detector = 'web'")
    assert n_records == N_NORMAL + N_INJECTED
    [(n_flagged,)] = query(daemon.db, "SELECT count(*) FROM records WHERE detector = 'web' AND is_outlier")
    assert n_flagged == len(rows)
    assert status["outliers"] == len(rows)

    text = daemon.metrics()
    assert metric(text, "vigil_outliers_total", detector="web") == len(rows)
    assert metric(text, "vigil_records_scored_total", detector="web") == N_NORMAL + N_INJECTED
    assert metric(text, "vigil_records_ingested_total", detector="web", source="http") == N_NORMAL + N_INJECTED
    assert metric(text, "vigil_model_info", detector="web", version="1") == 1.0
    assert metric(text, "vigil_training_runs_total", detector="web", result="success") == 1.0
    assert metric(text, "vigil_records", detector="web", state="pending") == 0.0
    assert metric(text, "process_resident_memory_bytes") is not None   # process collectors are on

    api_outliers = daemon.http.get("/v1/outliers", params={"limit": 1000}).json()["outliers"]
    assert len(api_outliers) == len(rows)
    injected = [o for o in api_outliers if o["fields"]["kind"] == "injected"]
    assert all(o["contributions"][0]["feature"] in ("cpu", "latency") for o in injected)

    assert daemon.terminate() == 0
    lines = [line for line in daemon.log.read_text(encoding="utf-8").splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]            # every line is one JSON object
    messages = [e["msg"] for e in events]
    assert {"daemon started", "training finished", "scored", "daemon stopped"} <= set(messages)
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in events)
    trained = next(e for e in events if e["logger"] == "detector.trainer" and e["msg"] == "training finished")
    assert trained["detector"] == "web" and trained["version"] == 1


@pytest.fixture
def interval_daemon(tmp_path: Path) -> Iterator[WebDaemon]:
    """A daemon that scores on its interval only (scoring.on_ingest = false): records wait as pending."""
    with WebDaemon(tmp_path, on_ingest=False) as d:
        yield d


def test_records_posted_once_a_model_is_active_are_stored_scored(daemon: WebDaemon) -> None:
    daemon.start()
    _post_in_batches(daemon, normal_records(N_NORMAL, seed=2, start=START))
    daemon.wait_for(daemon.settled, 90, "the first model and every record scored")
    before = daemon.metrics()
    later = START + timedelta(minutes=N_NORMAL)
    extra = normal_records(200, seed=3, start=later) + injected_records(3, later + timedelta(minutes=200))
    assert daemon.ingest(extra)["accepted"] == len(extra)
    # answered 200 means stored and scored in one transaction: no record of the POST waits for the score job
    [(pending,)] = query(daemon.db, "SELECT count(*) FROM records WHERE detector = 'web' AND state = 'pending'")
    assert pending == 0
    [(scored, version)] = query(daemon.db, "SELECT count(*), min(model_version_id) FROM records "
                                           "WHERE detector = 'web' AND ts >= ? AND score IS NOT NULL",
                                later.replace(tzinfo=None).isoformat(" "))
    assert scored == len(extra)
    assert version is not None
    rows = query(daemon.db, "SELECT o.record_id, r.is_outlier, r.score, o.score, json_extract(r.fields, '$.kind') "
                            "FROM outliers o JOIN records r ON r.id = o.record_id WHERE o.ts >= ?",
                 later.replace(tzinfo=None).isoformat(" "))
    assert sum(kind == "injected" for *_, kind in rows) >= 2
    assert all(is_outlier == 1 and r_score == o_score for _, is_outlier, r_score, o_score, _ in rows)
    after = daemon.metrics()
    scored_before = metric(before, "vigil_records_scored_total", detector="web") or 0.0
    assert metric(after, "vigil_records_scored_total", detector="web") == scored_before + len(extra)
    count_before = metric(before, "vigil_score_threshold_ratio_count", detector="web") or 0.0
    assert metric(after, "vigil_score_threshold_ratio_count", detector="web") == count_before + len(extra)


def test_restart_after_sigkill_keeps_records_and_model(interval_daemon: WebDaemon) -> None:
    daemon = interval_daemon
    daemon.start()
    _post_in_batches(daemon, normal_records(N_NORMAL, seed=2, start=START))
    daemon.wait_for(daemon.settled, 90, "the first model and every record scored")

    # accepted records must survive a crash that follows the 200 at once
    later = START + timedelta(minutes=N_NORMAL)
    extra = normal_records(300, seed=3, start=later) + injected_records(3, later + timedelta(minutes=300))
    assert daemon.ingest(extra)["accepted"] == len(extra)
    daemon.kill()
    assert daemon.proc is not None and daemon.proc.returncode == -signal.SIGKILL
    [(total,)] = query(daemon.db, "SELECT count(*) FROM records WHERE detector = 'web'")
    assert total == N_NORMAL + len(extra)
    [(pending,)] = query(daemon.db, "SELECT count(*) FROM records WHERE detector = 'web' AND state = 'pending'")
    assert pending > 0, "the kill came after the next score run; nothing was left pending"
    assert query(daemon.db, "SELECT version, status FROM model_versions WHERE detector = 'web'") == [(1, "active")]

    daemon.start()
    text = daemon.metrics()                                      # straight after start, before any training
    assert metric(text, "vigil_model_info", detector="web", version="1") == 1.0
    assert metric(text, "vigil_threshold", detector="web") is not None
    status = daemon.status()
    assert status["model"]["version"] == 1
    assert status["records"]["pending"] + status["records"]["scored"] == N_NORMAL + len(extra)

    daemon.wait_for(lambda: daemon.status()["records"]["pending"] == 0, 60, "the records left pending to be scored")
    status = daemon.status()
    assert status["records"]["scored"] == N_NORMAL + len(extra)
    assert status["model"]["version"] == 1
    assert query(daemon.db, "SELECT version, status FROM model_versions WHERE detector = 'web'") == [(1, "active")]
    [(unscored_model,)] = query(
        daemon.db, "SELECT count(*) FROM records WHERE detector = 'web' AND model_version_id IS NULL")
    assert unscored_model == 0
    rows = query(daemon.db, "SELECT fields FROM outliers WHERE detector = 'web'")
    assert sum(json.loads(f)["kind"] == "injected" for (f,) in rows) >= 2
    text = daemon.metrics()
    assert metric(text, "vigil_records_scored_total", detector="web") == pending
    assert metric(text, "vigil_training_runs_total", detector="web", result="success") == 0  # no retraining
    assert metric(text, "vigil_model_info", detector="web", version="1") == 1.0
    assert daemon.http.get("/v1/models").json()["models"][0]["version"] == 1

    assert daemon.terminate() == 0
    [(total_after,)] = query(daemon.db, "SELECT count(*) FROM records WHERE detector = 'web'")
    assert total_after == N_NORMAL + len(extra)


def test_sigterm_during_training_stops_promptly(tmp_path: Path) -> None:
    """A stop in the middle of a (very long) training run aborts it at the next epoch and exits 0."""
    daemon = WebDaemon(tmp_path, epochs=1_000_000, patience=1_000_000)
    try:
        daemon.start()
        _post_in_batches(daemon, normal_records(N_NORMAL, seed=4, start=START))

        def training() -> bool:
            return query(daemon.db, "SELECT result FROM training_runs WHERE detector = 'web' "
                                    "AND result != 'skipped'") == [("running",)]   # skipped: the window before

        daemon.wait_for(training, 60, "the first training run to start")
        time.sleep(1.0)                                           # well inside the epochs
        stopped = time.monotonic()
        assert daemon.terminate(timeout=15) == 0
        print(f"e2e: stopped {time.monotonic() - stopped:.1f} s after SIGTERM during training")
        [(result, message)] = query(daemon.db, "SELECT result, message FROM training_runs WHERE detector = 'web' "
                                               "AND result != 'skipped'")
        assert result == "failed"
        assert "stopping" in message
        assert query(daemon.db, "SELECT count(*) FROM model_versions") == [(0,)]
        [(total,)] = query(daemon.db, "SELECT count(*) FROM records WHERE detector = 'web'")
        assert total == N_NORMAL
    finally:
        daemon.close()
