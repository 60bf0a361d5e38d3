"""The Prometheus source against a real Prometheus server scraping a test exporter that misbehaves."""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.errors import SourceError
from detector.sources.prometheus import PrometheusSource, series_key
from tests.support.net import free_port

PROMETHEUS = shutil.which("prometheus")


class Exporter:
    """Serves app metrics: latency follows load, until `broken` makes instance a's latency jump."""

    def __init__(self) -> None:
        self.broken = False
        self._rng = random.Random(0)
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def render(self) -> str:
        lines = []
        for instance, phase in (("a", 0.0), ("b", 1.5)):
            rps = 100 + 50 * math.sin(time.time() / 7 + phase) + self._rng.gauss(0, 3)
            latency = 0.05 + rps / 2000 + self._rng.gauss(0, 0.002)
            if self.broken and instance == "a":
                latency = 0.9
            lines.append(f'app_requests_per_second{{host="{instance}"}} {rps:.4f}')
            lines.append(f'app_latency_seconds{{host="{instance}"}} {latency:.5f}')
        return "\n".join(lines) + "\n"


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    server = Exporter()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: Exporter) -> Iterator[str]:
    if PROMETHEUS is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed; .ci/run must install the Debian package 'prometheus'")
        pytest.skip("prometheus is not installed (Debian package 'prometheus')")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: app
            static_configs:
              - targets: ["127.0.0.1:{exporter.port}"]
    """))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("prometheus did not become ready: " + (tmp_path / "prometheus.log").read_text()[-2000:])
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _runtime(write_config: Callable[[str], Path], url: str) -> Runtime:
    body = f"""
    [detectors.app]
    key_field = "host"

    [detectors.app.source]
    type = "prometheus"
    url = "{url}"
    step = "1s"
    lag = "2s"
    backfill = "5m"
    key_label = "host"
    queries = {{ rps = "app_requests_per_second", latency = "app_latency_seconds" }}

    [detectors.app.features]
    rps = {{ kind = "numeric", optional = true }}
    latency = {{ kind = "numeric", optional = true }}

    [detectors.app.model]
    hidden = [8]
    latent = 1
    epochs = 60
    batch_size = 16
    patience = 8
    device = "cpu"

    [detectors.app.threshold]
    target_fpr = 0.02

    [detectors.app.training]
    window = "1h"
    min_records = 40
    first_window_trim = 0.0
    """
    return build_runtime(load_config(write_config(body)), CollectorRegistry(), with_process_metrics=False)


def _source(runtime: Runtime) -> PrometheusSource:
    source = runtime.sources[0]
    assert isinstance(source, PrometheusSource)
    return source


@pytest.mark.slow
def test_trains_on_prometheus_history_and_flags_the_misbehaviour(
        write_config: Callable[[str], Path], prometheus: str, exporter: Exporter) -> None:
    runtime = _runtime(write_config, prometheus)
    source = _source(runtime)
    repo = runtime.vigil.repo
    deadline = time.monotonic() + 60
    while sum(repo.count_by_state().values()) < 60:   # ~30 s of scrapes of 2 hosts
        assert time.monotonic() < deadline, "prometheus produced too few samples"
        time.sleep(2)
        source.poll()
    outcome = runtime.trainer.train("app")
    assert outcome.result == "success", outcome.message
    runtime.scorer.score("app")
    before = {o.id for o in repo.list_outliers("app", limit=1000)}

    exporter.broken = True
    time.sleep(6)
    exporter.broken = False
    time.sleep(3)                                   # past the source's lag
    source.poll()
    runtime.scorer.score("app")
    flagged = repo.list_outliers("app", limit=1000)
    broken = [o for o in flagged if o.key == "a" and o.fields.get("latency", 0) > 0.5]
    assert len(broken) >= 3, [(o.key, o.fields) for o in flagged]
    assert all(o.contributions[0]["feature"] == "latency" for o in broken)
    healthy = [o for o in flagged if o.id not in before and o.key == "b"]
    assert len(healthy) <= 4, [(o.ts, o.fields) for o in healthy]   # the healthy host stays (mostly) quiet
    counts = repo.count_by_state()
    stored = counts.get(("app", "scored"), 0) + counts.get(("app", "pending"), 0)
    keys = {(o.key, o.ts) for o in flagged}
    assert len(keys) == len(flagged)                          # no step stored twice for a key
    assert stored >= 60


def test_prometheus_down_is_a_source_error_and_the_watermark_stays(write_config: Callable[[str], Path]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    runtime = _runtime(write_config, url)
    with pytest.raises(SourceError, match=url.replace(".", r"\.")):
        _source(runtime).poll()
    assert runtime.vigil.repo.watermark("app", "prometheus") is None
    assert runtime.vigil.repo.latest_ts("app") is None


def test_series_keys() -> None:
    assert series_key({"instance": "a", "job": "x"}, "instance", several=True) == "a"
    assert series_key({"instance": "a"}, None, several=False) is None
    assert series_key({"job": "x", "instance": "a"}, None, several=True) == '{instance="a",job="x"}'


def test_features_must_be_query_names(write_config: Callable[[str], Path]) -> None:
    from detector.errors import ConfigError

    body = """
    [detectors.app]
    source = { type = "prometheus", url = "http://127.0.0.1:9090", queries = { rps = "up" } }
    [detectors.app.features]
    latency = "numeric"
    """
    with pytest.raises(ConfigError, match="latency"):
        load_config(write_config(body))
