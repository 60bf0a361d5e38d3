"""Reloads and config files that must not hurt a running daemon (issue 28: findings 6 and 8).

* 6: a reload to a file without detectors (it would remove every running one) or to a file that is not UTF-8 is
  refused with a log line, the running config stays and later reloads still work; `vigil config check` and
  `vigil run` refuse both files with exit status 2 and one line.
* 8: a detector a reload adds has its store metrics (`vigil_records`, `vigil_scoring_lag_seconds`,
  `vigil_outliers_unreviewed`, and `vigil_model_age_seconds` once it has a model) at the next scrape.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from detector.config import load_config
from detector.daemon import build_runtime
from tests.support.config import WEB_FEATURES, config_text, detector, heading, write_config_file
from tests.support.daemon import REPO, daemon_env
from tests.support.prom import metric
from tests.support.web import WebDaemon, normal_records

EXTRA = '\n[detectors.extra]\nsource = { type = "http" }\n[detectors.extra.features]\nx = "numeric"\n'
NOT_UTF8 = "# caf\xe9 in Latin-1\n".encode("latin-1")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[WebDaemon]:
    with WebDaemon(tmp_path) as d:
        yield d


def _reload(daemon: WebDaemon, content: bytes, logged: str) -> None:
    """Write the config, SIGHUP, and wait until `logged` appears in the log for one more time."""
    before = daemon.log.read_text().count(logged)
    daemon.config.write_bytes(content)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.log.read_text().count(logged) > before, 30, f"{logged!r} in the log")


def test_a_reload_that_would_drop_every_detector_or_is_not_utf8_is_refused(daemon: WebDaemon) -> None:
    daemon.start()
    original = daemon.config.read_bytes()
    heading_only = original.split(b"[detectors.")[0]

    _reload(daemon, heading_only, "config reload refused")
    log = daemon.log.read_text()
    assert "no detectors: add at least one [detectors.NAME] section" in log
    assert "config reloaded" not in log
    assert list(daemon.http.get("/v1/status").json()["detectors"]) == ["web"]

    _reload(daemon, original + NOT_UTF8, "not UTF-8 text")
    log = daemon.log.read_text()
    assert "config reload refused" in log.rsplit("no detectors", 1)[1]
    assert "byte 0xe9 on line" in log and "Traceback" not in log
    assert list(daemon.http.get("/v1/status").json()["detectors"]) == ["web"]

    # a good file still reloads; the detector it adds is in the store metrics at the next scrape
    _reload(daemon, original + EXTRA.encode(), "config reloaded")
    assert daemon.http.post("/v1/detectors/extra/records", json=[{"x": 1.5}],
                            headers={"Authorization": f"Bearer {daemon.token}"}).json()["accepted"] == 1
    text = daemon.metrics()
    assert metric(text, "vigil_records", detector="extra", state="pending") == 1
    assert metric(text, "vigil_records", detector="extra", state="scored") == 0
    assert metric(text, "vigil_scoring_lag_seconds", detector="extra") is not None
    assert metric(text, "vigil_outliers_unreviewed", detector="extra") == 0
    assert daemon.terminate() == 0


def test_a_detector_added_by_a_reload_reports_its_model_age(tmp_path: Path) -> None:
    """`web` has a model in the store; a runtime started without it gets it back by a reload: its model age
    (and its other store metrics) are there at once, not after a restart."""
    def config(name: str, *detectors: str) -> Path:
        return write_config_file(tmp_path / name, config_text(heading(), *detectors))

    web = detector("web", WEB_FEATURES, model={"hidden": [8], "latent": 2, "epochs": 3, "seed": 0,
                                               "device": "cpu"},
                   threshold={"calibration_folds": 1}, training={"min_records": 200, "window": "30d"})
    other = detector("other", {"x": "numeric"})
    first = build_runtime(load_config(config("first.toml", web)), CollectorRegistry(), with_process_metrics=False)
    try:
        first.vigil.ingest("web", normal_records(300, seed=0, start=datetime.now(UTC) - timedelta(hours=6)),
                           "http", "http")
        assert first.trainer.train("web", "first").result == "success"
    finally:
        first.vigil.repo.dispose()

    registry = CollectorRegistry()
    runtime = build_runtime(load_config(config("second.toml", other)), registry, with_process_metrics=False)
    try:
        assert metric(generate_latest(registry).decode(), "vigil_model_age_seconds", detector="web") is None
        assert runtime.reload(config("third.toml", other, web))
        text = generate_latest(registry).decode()
        assert (metric(text, "vigil_model_age_seconds", detector="web") or -1) >= 0
        assert metric(text, "vigil_records", detector="web", state="pending") == 300
        assert metric(text, "vigil_outliers_unreviewed", detector="web") == 0
        assert metric(text, "vigil_scoring_lag_seconds", detector="web") is not None
    finally:
        runtime.vigil.repo.dispose()


def _vigil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector.cli.main", *args], cwd=REPO, env=daemon_env(),
                          capture_output=True, text=True, timeout=120, check=False)


def test_config_check_and_run_refuse_a_file_without_detectors_or_not_utf8(tmp_path: Path) -> None:
    empty = write_config_file(tmp_path / "empty.toml", heading())
    latin = tmp_path / "latin.toml"
    latin.write_bytes(config_text(heading(), detector("web", WEB_FEATURES)).encode() + NOT_UTF8)
    for args, config, problem in [
        (("config", "check"), empty, "no detectors: add at least one [detectors.NAME] section"),
        (("run",), empty, "no detectors"),
        (("config", "check"), latin, "not UTF-8 text: byte 0xe9 on line"),
    ]:
        result = _vigil(*args, "--config", str(config))
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"vigil: invalid config {config}: "), result.stderr
        assert problem in lines[0], lines[0]
