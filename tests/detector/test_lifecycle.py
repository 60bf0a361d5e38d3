"""Living under systemd: sd_notify and the watchdog, SIGTERM under load, SIGHUP reloads, the model registry."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from detector.notify import Heartbeats, Notifier, Watchdog
from tests.support.web import WebDaemon, injected_records, normal_records, query

pytestmark = pytest.mark.slow


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            self.messages.append((time.monotonic(), data.decode()))
        return [m for _, m in self.messages]

    def fields(self) -> list[str]:
        return [field for message in self.drain() for field in message.split("\n")]

    def close(self) -> None:
        self.sock.close()


class NotifiedDaemon(WebDaemon):
    def start_notified(self, notify: NotifySocket, watchdog_usec: int = 1_000_000, timeout: float = 60) -> None:
        self.start(timeout, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(watchdog_usec)})


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[NotifiedDaemon]:
    with NotifiedDaemon(tmp_path) as d:
        yield d


def test_notify_ready_status_watchdog_stopping_in_order(daemon: NotifiedDaemon, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        daemon.start_notified(notify)
        deadline = time.monotonic() + 10
        while "WATCHDOG=1" not in notify.fields() and time.monotonic() < deadline:
            time.sleep(0.2)
        fields = notify.fields()
        assert "READY=1" in fields and "WATCHDOG=1" in fields, fields
        assert fields.index("READY=1") < fields.index("WATCHDOG=1")
        status = [f for f in fields if f.startswith("STATUS=")]
        assert status and "1 detector: web no model" in status[0]
        assert daemon._healthy()                       # READY came once HTTP was listening
        pings = fields.count("WATCHDOG=1")
        time.sleep(2)
        assert notify.fields().count("WATCHDOG=1") >= pings + 2      # about every 0.5 s
        assert daemon.terminate() == 0
        fields = notify.fields()
        assert fields[-1] == "STOPPING=1" or "STOPPING=1" in fields[-3:]
    finally:
        notify.close()


def test_a_stalled_job_stops_the_watchdog_pings(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    now = [1000.0]
    beats = Heartbeats(clock=lambda: now[0])
    release = threading.Event()
    beats.watch("score:web", 60)
    job = beats.wrap("score:web", release.wait)
    watchdog = Watchdog(Notifier(notify.path), beats, lambda: "1 detector", interval_s=0.5)
    try:
        assert watchdog.tick()
        worker = threading.Thread(target=job)
        worker.start()                                 # a score run hangs (e.g. in a database call)
        now[0] += 30
        assert watchdog.tick()                         # still within its limit
        now[0] += 61
        assert not watchdog.tick()                     # stalled: no ping
        release.set()
        worker.join(5)
        assert watchdog.tick()                         # recovered: pings again
        fields = notify.fields()
        assert fields.count("WATCHDOG=1") == 3
        assert "STATUS=stalled: score:web" in fields
    finally:
        notify.close()


def test_sigterm_under_load_exits_0_and_keeps_every_accepted_record(daemon: NotifiedDaemon, tmp_path: Path) -> None:
    daemon.start()
    start = datetime.now(UTC) - timedelta(hours=12)
    daemon.ingest(normal_records(400, seed=1, start=start))
    daemon.wait_for(daemon.settled, 90, "the first model and scoring")
    accepted: list[int] = []
    stop = threading.Event()

    def load() -> None:
        seq = 0
        while not stop.is_set():
            batch = [dict(r, seq=seq + i) for i, r in enumerate(normal_records(20, seq, start + timedelta(hours=6)))]
            try:
                response = daemon.http.post("/v1/detectors/web/records", json=batch,
                                            headers={"Authorization": f"Bearer {daemon.token}"}, timeout=5)
            except Exception:
                break
            if response.status_code == 200:
                accepted.extend(r["seq"] for r in batch)
            seq += 20

    client = threading.Thread(target=load)
    client.start()
    time.sleep(3)
    try:
        assert daemon.terminate(timeout=30) == 0
    finally:
        stop.set()
        client.join(10)
    assert accepted
    stored = {row[0] for row in query(daemon.db, "SELECT json_extract(fields, '$.seq') FROM records "
                                                 "WHERE json_extract(fields, '$.seq') IS NOT NULL")}
    assert set(accepted) <= stored
    assert "daemon stopped" in daemon.log.read_text()


def test_sighup_reloads_detectors_and_keeps_running_on_an_invalid_file(daemon: NotifiedDaemon) -> None:
    daemon.start()
    original = daemon.config.read_text()
    added = original + '\n[detectors.extra]\nsource = { type = "http" }\n[detectors.extra.features]\nx = "numeric"\n'
    daemon.config.write_text(added)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: "extra" in daemon.http.get("/v1/status").json()["detectors"], 20, "the added detector")
    answer = daemon.http.post("/v1/detectors/extra/records", json=[{"x": 1.5}],
                              headers={"Authorization": f"Bearer {daemon.token}"})
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    daemon.config.write_text(added + "\n[detectors.extra.model]\nlatent = -1\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: "config reload refused" in daemon.log.read_text(), 20, "the refusal in the log")
    assert "detectors.extra.model.latent" in daemon.log.read_text()
    assert "extra" in daemon.http.get("/v1/status").json()["detectors"]      # the running config stays
    daemon.config.write_text(original)                                        # removed again
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: "extra" not in daemon.http.get("/v1/status").json()["detectors"], 20,
                    "the removed detector")
    assert daemon.http.post("/v1/detectors/extra/records", json=[{"x": 1.0}],
                            headers={"Authorization": f"Bearer {daemon.token}"}).status_code == 404
    assert daemon.terminate() == 0


def test_models_promote_rollback_and_prune(daemon: NotifiedDaemon) -> None:
    def vigil(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "detector.cli.main", *args, "--config", str(daemon.config)],
                              cwd=daemon.dir, capture_output=True, text=True, timeout=120)

    daemon.start()
    daemon.ingest(normal_records(400, seed=2, start=datetime.now(UTC) - timedelta(hours=8)))
    daemon.wait_for(daemon.settled, 90, "the first model")
    daemon.terminate()
    for _ in range(2):
        trained = vigil("train", "web")
        assert trained.returncode == 0, trained.stderr
    assert [r for r in query(daemon.db, "SELECT version, status FROM model_versions ORDER BY version")] == [
        (1, "retired"), (2, "retired"), (3, "active")]
    rolled = vigil("models", "rollback", "web")
    assert rolled.returncode == 0 and "v2" in rolled.stdout
    promoted = vigil("models", "promote", "3")
    assert promoted.returncode == 0 and "v3 is active" in promoted.stdout
    shown = vigil("models", "show", "3")
    assert "threshold" in shown.stdout and "diversity" in shown.stdout
    from detector.store.db import open_repository

    repo = open_repository(f"sqlite:///{daemon.db}")
    assert repo.prune_models("web", keep=2) == 1
    repo.dispose()
    refused = vigil("models", "promote", "1")
    assert refused.returncode == 1 and "pruned" in refused.stderr
    assert vigil("models", "rollback", "web").returncode == 0          # to v2, still kept
    daemon.start()
    daemon.ingest(injected_records(3, datetime.now(UTC) - timedelta(hours=1)))
    daemon.wait_for(lambda: daemon.status()["records"]["pending"] == 0, 60, "scoring with the rolled-back model")
    assert {v for (v,) in query(daemon.db, "SELECT DISTINCT m.version FROM records r JOIN model_versions m "
                                           "ON m.id = r.model_version_id WHERE json_extract(r.fields, '$.kind') "
                                           "= 'injected'")} == {2}
    assert daemon.terminate() == 0
