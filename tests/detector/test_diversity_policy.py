"""The diversity guard in the daemon: block and warn policies, reporting, and out-of-distribution notes."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from tests.detector.conftest import HTTP_DETECTOR

T0 = datetime(2026, 11, 2, tzinfo=UTC)


def _records(n: int, start: datetime, seed: int, constant_cpu: bool = False) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        load = float(rng.uniform(10, 100))
        cpu = 42.0 if constant_cpu else 0.8 * load + float(rng.normal(0, 2))
        out.append({"ts": (start + timedelta(minutes=i)).isoformat(), "host": f"h{i % 3}", "load": load,
                    "cpu": cpu, "latency": 20 + 0.05 * load + float(rng.normal(0, 3)),
                    "region": "eu" if i % 2 else "us", "healthy": bool(i % 5)})
    return out


def _runtime(write_config: Callable[[str], Path], policy: str) -> Runtime:
    body = HTTP_DETECTOR.replace('window = "30d"', 'window = "4h"')
    body += f'\n[detectors.web.diversity]\npolicy = "{policy}"\n'
    return build_runtime(load_config(write_config(body)), CollectorRegistry(), with_process_metrics=False)


def _first_model_then_poor_window(runtime: Runtime) -> None:
    runtime.vigil.ingest("web", _records(240, T0, seed=1), "http")
    first = runtime.trainer.train("web")
    assert first.result == "success", first.message
    runtime.scorer.score("web")
    # the poor window reaches the next training unscored, as records waiting for the score job do (scored on
    # ingest, most of its constant-cpu records would be flagged by the first model and left out of the window)
    runtime.vigil.scorer = None
    runtime.vigil.ingest("web", _records(240, T0 + timedelta(days=1), seed=2, constant_cpu=True), "http")


def test_block_policy_keeps_the_active_model_and_records_the_refusal(
        write_config: Callable[[str], Path], caplog: pytest.LogCaptureFixture) -> None:
    runtime = _runtime(write_config, "block")
    _first_model_then_poor_window(runtime)
    with caplog.at_level(logging.WARNING):
        outcome = runtime.trainer.train("web")
    assert outcome.result == "refused"
    assert "constant" in outcome.message and "cpu" in outcome.message
    repo = runtime.vigil.repo
    active = repo.active_model("web", with_weights=False)
    assert active is not None and active.version == 1
    run = repo.last_training_run("web")
    assert run is not None and run.result == "refused" and run.model_version is None
    assert run.diversity is not None and run.diversity["status"] == "fail"
    failing = {(c["check"], c["feature"]) for c in run.diversity["checks"] if c["status"] == "fail"}
    assert ("constant", "cpu") in failing
    status = runtime.vigil.status()["detectors"]["web"]
    assert status["model"]["version"] == 1
    assert status["last_training"]["result"] == "refused"
    assert any(p["check"] == "constant" for p in status["last_training"]["diversity"]["problems"])
    registry = runtime.registry
    assert registry.get_sample_value("vigil_training_runs_total", {"detector": "web", "result": "refused"}) == 1
    assert registry.get_sample_value("vigil_training_data_check_failing",
                                     {"detector": "web", "check": "constant"}) == 1
    assert registry.get_sample_value("vigil_training_data_check_failing",
                                     {"detector": "web", "check": "duplicates"}) == 0
    warnings = [r for r in caplog.records if r.getMessage() == "training data check did not pass"]
    assert any(getattr(r, "check", None) == "constant" and getattr(r, "feature", None) == "cpu" for r in warnings)


def test_warn_policy_promotes_the_model_and_it_carries_the_warnings(
        write_config: Callable[[str], Path]) -> None:
    runtime = _runtime(write_config, "warn")
    _first_model_then_poor_window(runtime)
    outcome = runtime.trainer.train("web")
    assert outcome.result == "success", outcome.message
    model = runtime.vigil.repo.active_model("web", with_weights=False)
    assert model is not None and model.version == 2
    checks = model.meta["diversity"]["checks"]
    assert any(c["check"] == "constant" and c["feature"] == "cpu" and c["status"] == "fail" for c in checks)


def test_healthy_window_passes_every_check(runtime: Runtime) -> None:
    runtime.vigil.ingest("web", _records(600, T0, seed=3), "http")
    outcome = runtime.trainer.train("web")
    assert outcome.result == "success"
    assert outcome.diversity is not None
    assert [c.to_dict() for c in outcome.diversity.problems] == []


def test_out_of_distribution_values_are_marked_and_counted(runtime: Runtime) -> None:
    runtime.vigil.ingest("web", _records(600, T0, seed=4), "http")
    assert runtime.trainer.train("web").result == "success"
    runtime.scorer.score("web")
    odd = {"ts": T0.isoformat(), "host": "h1", "load": 50.0, "cpu": 40.0, "latency": 25.0,
           "region": "mars", "healthy": True}
    far = dict(odd, region="eu", load=900.0)
    runtime.vigil.ingest("web", [odd, far], "http")
    runtime.scorer.score("web")
    db = runtime.config.store_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT json_extract(fields, '$.region'), json_extract(fields, '$.load'), ood, is_outlier "
                            "FROM records WHERE ood IS NOT NULL").fetchall()
    ood = {f"{region}{load}": (json.loads(text), flagged) for region, load, text, flagged in rows}
    assert set(ood) == {"mars50.0", "eu900.0"}, list(ood.values())[:3]
    assert ood["mars50.0"][0] == {"unseen_category": ["region"], "rare_category": [], "out_of_range": []}
    assert ood["eu900.0"][0] == {"unseen_category": [], "rare_category": [], "out_of_range": ["load"]}
    flagged = runtime.vigil.repo.list_outliers("web", limit=10)
    assert any(o.ood == {"unseen_category": [], "rare_category": [], "out_of_range": ["load"]} for o in flagged)
    registry = runtime.registry
    assert registry.get_sample_value("vigil_records_out_of_distribution_total",
                                     {"detector": "web", "kind": "unseen_category"}) == 1
    assert registry.get_sample_value("vigil_records_out_of_distribution_total",
                                     {"detector": "web", "kind": "out_of_range"}) == 1


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector.cli.main", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_check_data_on_files_reports_json_and_exit_status(tmp_path: Path) -> None:
    good = pd.DataFrame(_records(500, T0, seed=5))
    good.to_csv(tmp_path / "good.csv", index=False)
    bad = good.copy()
    bad["cpu"] = 7.5
    bad.to_csv(tmp_path / "bad.csv", index=False)
    ok = _cli(tmp_path, "check-data", "--file", "good.csv", "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert all(set(c) == {"check", "status", "value", "limit", "feature", "message"} for c in report["checks"])
    assert report["status"] != "fail" and not [c for c in report["checks"] if c["status"] == "fail"], report
    failed = _cli(tmp_path, "check-data", "--file", "bad.csv", "--json")
    assert failed.returncode == 1
    checks = json.loads(failed.stdout)["checks"]
    constant = [c for c in checks if c["check"] == "constant" and c["feature"] == "cpu"]
    assert constant and constant[0]["status"] == "fail" and "7.5" in constant[0]["message"]
    table = _cli(tmp_path, "check-data", "--file", "bad.csv")
    assert table.returncode == 1 and "constant" in table.stdout and "window: fail" in table.stdout
