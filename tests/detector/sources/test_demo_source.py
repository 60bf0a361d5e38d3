"""The demo source against a real store: backfill, resume after a restart, and what a model learns from it."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.sources.demo import DEMO_FEATURES, DemoSource
from detector.sources.demo_data import INCIDENT_KINDS, DemoSettings, generate
from tests.support.demo import NOW, REPO, SHIPPED, FakeClock, demo_config_text, demo_source_config

STEP = timedelta(minutes=1)


@pytest.fixture
def demo_runtime(write_config: Callable[[str], Path]) -> Callable[..., Runtime]:
    def build(history: str, hosts: int, **kwargs: Any) -> Runtime:
        config = load_config(write_config(demo_config_text(history, hosts, **kwargs)))
        return build_runtime(config, CollectorRegistry(), with_process_metrics=False)

    return build


def stored(runtime: Runtime) -> list[tuple[str, datetime]]:
    """(key, ts) of every stored demo record (read before scoring: no outliers excluded yet)."""
    rows = runtime.vigil.repo.training_window("demo", datetime(2000, 1, 1, tzinfo=UTC), 10**7)
    return [(r.key or "", r.ts) for r in rows]


def assert_contiguous(pairs: list[tuple[str, datetime]], hosts: int, first: datetime, end: datetime) -> None:
    """Every host has exactly one record per step in [first, end): no duplicate and no gap."""
    duplicates = [pair for pair, n in Counter(pairs).items() if n > 1]
    assert duplicates == []
    steps = int((end - first) / STEP)
    by_host: dict[str, list[datetime]] = {}
    for key, ts in pairs:
        by_host.setdefault(key, []).append(ts)
    assert sorted(by_host) == [f"web-{h + 1}" for h in range(hosts)]
    for key, times in by_host.items():
        assert sorted(times) == [first + i * STEP for i in range(steps)], key


def test_shipped_demo_features_match_the_source() -> None:
    assert SHIPPED["source"]["type"] == "demo"
    assert SHIPPED["features"] == DEMO_FEATURES


def test_first_poll_backfills_history_without_rejects(demo_runtime: Callable[..., Runtime]) -> None:
    runtime = demo_runtime("6h", 3)
    clock = FakeClock(NOW)
    source = DemoSource(demo_source_config(runtime), runtime.vigil.sink("demo", "demo"), clock=clock)
    assert source.poll() == 6 * 60 * 3
    assert runtime.vigil.repo.list_rejects("demo") == []
    pairs = stored(runtime)
    assert len(pairs) == 6 * 60 * 3
    assert_contiguous(pairs, 3, NOW - timedelta(hours=6), NOW)
    assert runtime.vigil.repo.watermark("demo", "demo") == NOW.isoformat()
    status = runtime.vigil.status()["detectors"]["demo"]
    assert status["records"] == {"pending": 1080, "scored": 0, "rejected": 0}
    assert source.poll() == 0                       # the clock has not moved: nothing new

    [record] = [r for r in runtime.vigil.repo.training_window("demo", NOW - STEP, 10) if r.key == "web-1"]
    assert set(DEMO_FEATURES) <= set(record.fields)
    assert record.fields["incident"] in ("none", *INCIDENT_KINDS)


def test_simulated_time_runs_at_speed(demo_runtime: Callable[..., Runtime]) -> None:
    runtime = demo_runtime("6h", 3)
    clock = FakeClock(NOW)
    source = DemoSource(demo_source_config(runtime), runtime.vigil.sink("demo", "demo"), clock=clock)
    source.poll()
    clock.advance(timedelta(seconds=30))
    speed = SHIPPED["source"]["speed"]
    assert source.poll() == 3 * int(speed * 30 / 60)    # 12x: 30 s of wall time are 6 simulated minutes


def test_restart_resumes_from_the_watermark(demo_runtime: Callable[..., Runtime]) -> None:
    runtime = demo_runtime("6h", 3)
    cfg = demo_source_config(runtime)
    clock = FakeClock(NOW)
    first = DemoSource(cfg, runtime.vigil.sink("demo", "demo"), clock=clock)
    first.poll()
    clock.advance(timedelta(minutes=1))
    first.poll()                                    # simulated time is now 12 minutes ahead of the clock
    simulated = NOW + timedelta(minutes=12)
    assert runtime.vigil.repo.watermark("demo", "demo") == simulated.isoformat()

    clock.advance(timedelta(minutes=1))             # the daemon restarts: a new source on the same store
    second = DemoSource(cfg, runtime.vigil.sink("demo", "demo"), clock=clock)
    assert second.poll() == 0                       # nothing past the watermark yet, no replay
    clock.advance(timedelta(seconds=30))
    assert second.poll() == 6 * 3                   # 30 s at 12x from the watermark on
    end = simulated + timedelta(minutes=6)

    clock.advance(timedelta(minutes=30, seconds=30))  # a second restart: the clock has passed the watermark
    assert clock.now == NOW + timedelta(minutes=33)
    third = DemoSource(cfg, runtime.vigil.sink("demo", "demo"), clock=clock)
    assert third.poll() == 15 * 3                   # the 15 minutes from the watermark to now, once
    end = clock.now
    pairs = stored(runtime)
    assert_contiguous(pairs, 3, NOW - timedelta(hours=6), end)
    assert runtime.vigil.repo.list_rejects("demo") == []


def test_restart_after_a_long_stop_resumes_within_history(demo_runtime: Callable[..., Runtime]) -> None:
    runtime = demo_runtime("6h", 3)
    cfg = demo_source_config(runtime)
    clock = FakeClock(NOW)
    DemoSource(cfg, runtime.vigil.sink("demo", "demo"), clock=clock).poll()
    clock.advance(timedelta(days=3))
    assert DemoSource(cfg, runtime.vigil.sink("demo", "demo"), clock=clock).poll() == 6 * 60 * 3
    pairs = stored(runtime)
    assert len(pairs) == len(set(pairs)) == 2 * 6 * 60 * 3
    assert min(ts for _, ts in pairs if ts > NOW) == clock.now - timedelta(hours=6)


@pytest.mark.slow
def test_model_on_demo_data_flags_incidents(demo_runtime: Callable[..., Runtime]) -> None:
    """Trained on two days of four hosts, the shipped model settings catch incidents far above chance."""
    runtime = demo_runtime("2d", 4)
    clock = FakeClock(NOW)
    source = DemoSource(demo_source_config(runtime), runtime.vigil.sink("demo", "demo"), clock=clock)
    n = source.poll()
    assert n == 2 * 1440 * 4
    assert runtime.trainer.ready_for_first_model("demo")
    outcome = runtime.trainer.train("demo", "first")
    assert outcome.result == "success", outcome.message
    assert runtime.scorer.score("demo") == n

    records = runtime.vigil.repo.training_window("demo", datetime(2000, 1, 1, tzinfo=UTC), 10**7)
    normal_left = len(records)                      # unflagged records only
    outliers = runtime.vigil.repo.list_outliers("demo", None, 10**6)
    assert normal_left + len(outliers) == n
    truth = generate(NOW - timedelta(days=2), NOW, DemoSettings(hosts=4, seed=SHIPPED["source"]["seed"],
                                                                incident_rate=SHIPPED["source"]["incident_rate"]))
    incident_records = sum(r.incident is not None for r in truth)
    base_share = incident_records / n
    flagged_incidents = [o.fields["incident"] for o in outliers if o.fields["incident"] != "none"]
    flagged_share = len(flagged_incidents) / len(outliers)
    kinds = Counter(flagged_incidents)
    recall = len(flagged_incidents) / incident_records
    print(f"demo: {len(outliers)} flagged of {n}; incident share {flagged_share:.2f} among flagged vs "
          f"{base_share:.3f} overall; recall {recall:.2f}; kinds {dict(kinds)}")
    assert 0 < base_share < 0.15
    assert flagged_share >= 5 * base_share
    assert flagged_share >= 0.5
    assert len(kinds) >= 4
    assert len(outliers) <= 0.1 * n


@pytest.mark.slow
def test_shipped_config_trains_a_first_model_after_one_poll(tmp_path: Path) -> None:
    """config.toml as shipped: the first poll backfills enough records for the first model at once."""
    path = tmp_path / "config.toml"
    shutil.copy(REPO / "config.toml", path)            # state_dir = "state" is relative to the file
    config = load_config(path)
    assert config.daemon.state_dir == tmp_path / "state"
    runtime = build_runtime(config, CollectorRegistry(), with_process_metrics=False)
    [source] = runtime.sources
    assert isinstance(source, DemoSource)
    det = config.detectors["demo"]
    cfg = demo_source_config(runtime)
    assert not runtime.trainer.ready_for_first_model("demo")
    accepted = source.poll()
    assert accepted >= det.training.min_records
    expected = cfg.history / cfg.step * cfg.hosts
    assert expected - cfg.hosts <= accepted <= expected + cfg.hosts
    assert runtime.vigil.repo.list_rejects("demo") == []
    assert runtime.trainer.ready_for_first_model("demo")
    runtime.train_job("demo")
    status = runtime.vigil.status()["detectors"]["demo"]
    assert status["last_training"]["result"] == "success", status["last_training"]["message"]
    assert status["last_training"]["trigger"] == "first"
    assert status["model"]["version"] == 1
    assert status["model"]["n_records"] == accepted
    assert (tmp_path / "state" / "vigil.db").exists()
    assert config.http.token_file == tmp_path / "state" / "api-token"
