"""Alerts that reach people: a real daemon, Debian's Prometheus with deploy/prometheus/rules.yml and Debian's
Alertmanager with deploy/alertmanager/alertmanager.yml, delivering to a webhook receiver this test runs.

The daemon trains a first model, then sees a burst of anomalous records; VigilOutlierRateHigh fires and
arrives on the webhook with its detector label and a link to that detector's unreviewed outliers on the
review page. The dashboard's detector variable (`label_values(vigil_records, detector)`) lists every
configured detector from the first scrape, and a detector added by a SIGHUP reload as soon as it is there.

The copies of the rules and the Alertmanager config differ from deploy/ only in timing (`for:` durations
to 0s, grouping waits to 1s) and in the webhook's address, so the test takes a minute, not an hour.
"""

from __future__ import annotations

import json
import re
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.deploy._support import (
    DEPLOY,
    REPO,
    RULES,
    anomalous_records,
    live_prometheus_config,
    normal_records,
    require_binary,
)
from tests.support.config import WEB_FEATURES, config_text, daemon_heading, detector, write_config_file
from tests.support.daemon import daemon_env, vigil_run
from tests.support.net import free_port
from tests.support.process import Process, wait_for

pytestmark = pytest.mark.slow

ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"


class Webhook:
    """An HTTP receiver for Alertmanager's webhook: every alert of every notification, in arrival order."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.paths: list[str] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                received.paths.append(self.path)
                received.alerts.extend(body.get("alerts", []))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["labels"].get("alertname") == name and a["status"] == "firing"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def daemon_config(port: int, extra: bool = False) -> str:
    model = {"hidden": [8], "latent": 2, "epochs": 10, "batch_size": 64, "seed": 0, "device": "cpu"}
    parts = [daemon_heading(port),
             detector("web", WEB_FEATURES, model=model, training={"interval": "1h", "min_records": 100},
                      scoring={"interval": "1s"}),
             detector("idle", WEB_FEATURES, model=model, training={"interval": "1h", "min_records": 100})]
    if extra:
        parts.append(detector("added", WEB_FEATURES, model=model, training={"interval": "1h"}))
    return config_text(*parts)


def fast_rules(text: str) -> str:
    """deploy's rules with every `for:` at 0s (the expressions and annotations as shipped)."""
    return re.sub(r"(?m)^(\s+for:) \S+$", r"\1 0s", text)


def fast_alertmanager(text: str, webhook: str) -> str:
    """deploy's Alertmanager config grouping within a second and delivering to the test's webhook."""
    text = re.sub(r"(?m)^(\s+group_wait:) \S+", r"\1 1s", text)
    text = re.sub(r"(?m)^(\s+group_interval:) \S+", r"\1 1s", text)
    return re.sub(r"http://127\.0\.0\.1:9095", webhook, text)



@pytest.fixture
def webhook() -> Iterator[Webhook]:
    receiver = Webhook()
    yield receiver
    receiver.close()


def test_outlier_alert_reaches_the_webhook_with_a_review_link(tmp_path: Path, webhook: Webhook) -> None:
    prometheus_bin = require_binary("prometheus", "to evaluate the alert rules against a real daemon")
    alertmanager_bin = require_binary("prometheus-alertmanager", "to deliver Vigil's alerts to a webhook")
    vigil_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
    config = write_config_file(tmp_path / "config.toml", daemon_config(vigil_port))
    work = tmp_path / "stack"
    work.mkdir()
    (work / "rules.yml").write_text(fast_rules(RULES.read_text(encoding="utf-8")), encoding="utf-8")
    (work / "prometheus.yml").write_text(
        live_prometheus_config(vigil_port, alertmanager_port), encoding="utf-8")
    (work / "alertmanager.yml").write_text(
        fast_alertmanager(ALERTMANAGER_CONFIG.read_text(encoding="utf-8"), webhook.url), encoding="utf-8")

    procs: list[Process] = []
    vigil = httpx2.Client(base_url=f"http://127.0.0.1:{vigil_port}", timeout=30)
    prometheus = httpx2.Client(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=30)
    try:
        daemon = Process("vigil", vigil_run(config), tmp_path / "vigil.log", REPO, daemon_env())
        procs.append(daemon)
        procs.append(Process("alertmanager", [
            alertmanager_bin, f"--config.file={work / 'alertmanager.yml'}", f"--storage.path={work / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{alertmanager_port}", "--cluster.listen-address=", "--log.level=warn"],
            tmp_path / "alertmanager.log", work))
        procs.append(Process("prometheus", [
            prometheus_bin, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
            tmp_path / "prometheus.log", work))

        def answers(client: httpx2.Client, path: str) -> bool:
            try:
                return client.get(path).status_code == 200
            except httpx2.TransportError:
                return False

        wait_for(lambda: answers(vigil, "/healthz"), 60, "the daemon's /healthz", *procs)
        wait_for(lambda: answers(prometheus, "/-/ready"), 30, "Prometheus to be ready", *procs)

        def detectors_listed() -> set[str]:
            body = prometheus.get("/api/v1/label/detector/values", params={"match[]": "vigil_records"}).json()
            return set(body.get("data") or [])

        # the dashboard's detector variable: every configured detector, from the first scrape on
        wait_for(lambda: detectors_listed() == {"web", "idle"}, 30, "web and idle in label_values(vigil_records)",
                 *procs)

        token = (tmp_path / "state" / "api-token").read_text(encoding="utf-8").strip()
        auth = {"Authorization": f"Bearer {token}"}

        def post(records: list[dict[str, Any]]) -> None:
            response = vigil.post("/v1/detectors/web/records", json=records, headers=auth)
            assert response.status_code == 200, response.text

        post(normal_records(150, seed=1, end=datetime.now(UTC)))
        wait_for(lambda: vigil.get("/v1/status").json()["detectors"]["web"]["model"] is not None, 90,
                 "the first model of web", *procs)
        burst = 0

        def alert_arrived() -> bool:
            nonlocal burst
            burst += 1            # an incident: every record far from normal, enough of them to count
            post([{**r, "ts": (datetime.now(UTC) - timedelta(seconds=1)).isoformat(), "host": f"web-{i % 4}"}
                  for i, r in enumerate(anomalous_records(40))])
            return bool(webhook.firing("VigilOutlierRateHigh"))

        wait_for(alert_arrived, 120, "VigilOutlierRateHigh on the webhook", *procs)
        [alert] = webhook.firing("VigilOutlierRateHigh")[:1]
        assert alert["labels"]["detector"] == "web" and alert["labels"]["severity"] == "warning"
        assert alert["labels"]["instance"] == f"127.0.0.1:{vigil_port}"
        review = alert["annotations"]["review"]
        assert review == f"http://127.0.0.1:{vigil_port}/review?detector=web&review_state=unreviewed"
        assert vigil.get(review.removeprefix(f"http://127.0.0.1:{vigil_port}")).status_code == 200
        assert "/vigil/reviewers" in webhook.paths       # routed by deploy's config to the reviewers

        # a detector added by a reload is listed as soon as the daemon has it
        write_config_file(config, daemon_config(vigil_port, extra=True))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: detectors_listed() == {"web", "idle", "added"}, 30, "the reloaded detector listed",
                 *procs)
    finally:
        for proc in procs:
            proc.stop()
        vigil.close()
        prometheus.close()
