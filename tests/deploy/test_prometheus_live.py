"""The dashboard's and the alert rules' queries against a real Prometheus scraping a real daemon.

A `vigil run` process gets records over HTTP, trains its first model, scores, flags outliers and
out-of-distribution records and rejects a bad record; a second detector asks for a CUDA device that does
not exist, so its training fails (failed runs, training errors) and its constant feature fails a
training-data check. A `prometheus` process scrapes the daemon every second and loads a copy of
deploy/prometheus/rules.yml. Then every panel query and the left-hand side of every alert expression
must return data: a misspelled metric or label, or a label matching that drops everything, shows up here.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.deploy._support import (
    REPO,
    RULES,
    alert_rules,
    anomalous_records,
    checked_queries,
    dashboard,
    live_prometheus_config,
    normal_records,
    panel_queries,
    require_binary,
    substitute,
)
from tests.support.config import WEB_FEATURES, config_text, daemon_heading, detector, write_config_file
from tests.support.daemon import daemon_env, vigil_run
from tests.support.net import free_port
from tests.support.process import Process, wait_for

pytestmark = pytest.mark.slow

# Grafana renders a multi-value variable as a regex alternation; the windows are those of a 1 s scrape
VARIABLES = {"detector": "(web|broken)", "__rate_interval": "15s", "__interval": "5s", "__range": "1m",
             "__range_s": "60", "__range_ms": "60000", "__interval_ms": "5000"}
DATA_TIMEOUT_S = 60


def stack_config(port: int) -> str:
    """The daemon: `web` trains its first model once 100 records are in; `broken`'s training always fails, its
    device does not exist (with or without CUDA)."""
    model = {"hidden": [8], "latent": 2, "epochs": 10}
    training = {"interval": "1h", "min_records": 100}
    return config_text(
        daemon_heading(port),
        detector("web", WEB_FEATURES, model={**model, "batch_size": 64, "seed": 0, "device": "cpu"},
                 training=training, scoring={"interval": "1s"}),
        detector("broken", WEB_FEATURES, model={**model, "device": "cuda:99"}, training=training,
                 scoring={"interval": "1s"}))



class Client:
    """The daemon's API and Prometheus' HTTP API."""

    def __init__(self, vigil_url: str, prometheus_url: str, token_file: Path) -> None:
        self.vigil = httpx2.Client(base_url=vigil_url, timeout=30)
        self.prometheus = httpx2.Client(base_url=prometheus_url, timeout=30)
        self.token_file = token_file

    def close(self) -> None:
        self.vigil.close()
        self.prometheus.close()

    def up(self, client: httpx2.Client, path: str) -> bool:
        try:
            return client.get(path).status_code == 200
        except httpx2.TransportError:
            return False

    def post(self, detector: str, records: list[dict[str, Any]], expect: int = 200) -> dict[str, Any]:
        token = self.token_file.read_text(encoding="utf-8").strip()
        response = self.vigil.post(f"/v1/detectors/{detector}/records", json=records,
                                   headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == expect, response.text
        body: dict[str, Any] = response.json()
        return body

    def review_first_outlier(self, detector: str) -> None:
        """Wait for an outlier of `detector` and dismiss it (verdict metrics need one)."""
        token = self.token_file.read_text(encoding="utf-8").strip()
        found: list[dict[str, Any]] = []

        def flagged() -> bool:
            found[:] = self.vigil.get("/v1/outliers", params={"detector": detector}).json()["outliers"]
            return bool(found)

        wait_for(flagged, 30, f"an outlier of {detector}")
        answer = self.vigil.post(f"/v1/outliers/{found[0]['id']}/review", json={"verdict": "dismissed"},
                                 headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text

    def model(self, detector: str) -> Any:
        return self.vigil.get("/v1/status").json()["detectors"][detector]["model"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = self.prometheus.get("/api/v1/query", params={"query": promql})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{promql}\n{body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@contextlib.contextmanager
def running_stack(tmp_path: Path, prometheus_bin: str) -> Iterator[tuple[Client, Process, Process]]:
    """The daemon and Prometheus started; both are stopped on the way out, whatever happened."""
    vigil_port, prometheus_port = free_port(), free_port()
    config = write_config_file(tmp_path / "config.toml", stack_config(vigil_port))
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    shutil.copy(RULES, prom_dir / "rules.yml")
    (prom_dir / "prometheus.yml").write_text(live_prometheus_config(vigil_port), encoding="utf-8")

    procs: list[Process] = []
    client = Client(f"http://127.0.0.1:{vigil_port}", f"http://127.0.0.1:{prometheus_port}",
                    tmp_path / "state" / "api-token")
    try:
        daemon = Process("vigil", vigil_run(config), tmp_path / "vigil.log", REPO, daemon_env())
        procs.append(daemon)
        prometheus = Process("prometheus", [
            prometheus_bin, f"--config.file={prom_dir / 'prometheus.yml'}", f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
            tmp_path / "prometheus.log", prom_dir)
        procs.append(prometheus)
        yield client, daemon, prometheus
    finally:
        for proc in procs:
            proc.stop()
        client.close()


def test_every_dashboard_query_and_alert_left_hand_side_returns_data(tmp_path: Path) -> None:
    prometheus_bin = require_binary("prometheus", "to run the dashboard and alert queries against a real Prometheus")
    with running_stack(tmp_path, prometheus_bin) as (client, daemon, prometheus):
        _check_queries(client, daemon, prometheus)


def _check_queries(client: Client, daemon: Process, prometheus: Process) -> None:
    started = time.monotonic()
    wait_for(lambda: client.up(client.vigil, "/healthz"), 60, "the daemon's /healthz", daemon)
    wait_for(lambda: client.up(client.prometheus, "/-/ready"), 30, "Prometheus to be ready", prometheus)

    now = datetime.now(UTC)
    assert client.post("web", normal_records(150, seed=1, end=now))["accepted"] == 150
    assert client.post("broken", normal_records(120, seed=2, end=now, constant_cpu=True))["accepted"] == 120
    # the score job trains the first model as soon as min_records are stored
    wait_for(lambda: client.model("web") is not None, 60, "the first model of web", daemon)
    trained = time.monotonic()
    bad = {"ts": now.isoformat(), "host": "web-1", "load": 0.5, "cpu": 40.0, "latency": "fast", "region": "eu-west"}
    body = client.post("web", [*anomalous_records(5), bad], expect=422)
    assert body["accepted"] == 5 and [r["reason"] for r in body["rejected"]] == ["wrong_type"]
    client.review_first_outlier("web")       # review panels need a verdict

    board = dashboard()
    queries = {f"panel {title!r} [{i}]": substitute(expr, VARIABLES)
               for i, (title, expr) in enumerate(panel_queries(board)) if expr}
    for rule in alert_rules():
        for i, query in enumerate(checked_queries(rule.expr)):
            queries[f"alert {rule.name} [{i}]"] = query
    # an alert that must fire on this data: the broken detector's training keeps failing
    [failing] = [r for r in alert_rules() if r.name == "VigilTrainingFailing"]
    queries["alert VigilTrainingFailing (whole expression)"] = failing.expr

    empty = dict(queries)
    seq = 0

    def all_have_data() -> bool:
        nonlocal seq
        seq += 1        # keep records arriving, so rates are above zero and scoring keeps going
        extra = normal_records(10, seed=100 + seq, end=datetime.now(UTC)) + anomalous_records(1)
        client.post("web", extra)
        for where, query in list(empty.items()):
            if client.query(query):
                del empty[where]
        return not empty

    deadline = trained + DATA_TIMEOUT_S
    while not all_have_data():
        daemon.check_alive()
        prometheus.check_alive()
        if time.monotonic() > deadline:
            listing = "\n".join(f"  {where}: {query}" for where, query in empty.items())
            pytest.fail(f"queries without data {DATA_TIMEOUT_S} s after the first model:\n{listing}\n"
                        f"{daemon.tail()}\n{prometheus.tail()}")
        time.sleep(1)
    have_data = time.monotonic()

    [result] = client.query(failing.expr)
    assert result["metric"]["detector"] == "broken" and result["metric"]["job"] == "vigil"

    groups = {g["name"] for g in _rule_groups(client)}
    wanted = {rule.group for rule in alert_rules()}
    assert groups == wanted
    never = "0001-01-01T00:00:00Z"      # Prometheus' lastEvaluation of a rule not evaluated yet
    wait_for(lambda: all(r["lastEvaluation"] != never for g in _rule_groups(client) for r in g["rules"]),
             10, "every rule to be evaluated", prometheus)
    loaded = {r["name"]: r for g in _rule_groups(client) for r in g["rules"]}
    assert set(loaded) == {rule.name for rule in alert_rules()}
    for name, rule in loaded.items():
        assert rule["health"] in ("ok", "unknown") and not rule.get("lastError"), f"{name}: {json.dumps(rule)}"
    print(f"prometheus live: model after {trained - started:.1f} s, all {len(queries)} queries with data "
          f"{have_data - trained:.1f} s later, {time.monotonic() - started:.1f} s in all")


def _rule_groups(client: Client) -> list[dict[str, Any]]:
    body = client.prometheus.get("/api/v1/rules").json()
    assert body["status"] == "success", body
    groups: list[dict[str, Any]] = body["data"]["groups"]
    return groups
