"""A database outage under load: a real daemon on a PostgreSQL cluster of its own, stopped for 30 s and restarted.

The cluster is made with initdb in a temporary folder (as root, initdb, pg_ctl and postgres run as the
`postgres` OS user) and listens on a free port on 127.0.0.1 only, so stopping it touches nothing else. While
it is down, ingestion must answer 503 with Retry-After (never 500), /healthz and /metrics must keep answering,
store errors must be counted and the daemon must keep running. Afterwards every record acknowledged with 2xx
must be stored exactly once, the pending ones scored, and the first model trained.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
import sqlalchemy as sa

from tests.support.config import WEB_FEATURES, config_text, daemon_heading, detector, write_config_file
from tests.support.daemon import Daemon
from tests.support.net import free_port
from tests.support.prom import metric

pytestmark = pytest.mark.slow

OUTAGE_S = 30.0
BATCH = 10
MIN_RECORDS = 150
START = (datetime.now(UTC) - timedelta(hours=6)).replace(microsecond=0)

def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI must be able to run a PostgreSQL cluster)")
    pytest.skip(reason)


class Cluster:
    """A throw-away PostgreSQL cluster: initdb into a folder, pg_ctl start/stop on a free loopback port."""

    def __init__(self, root: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        initdb = found[-1] if found else shutil.which("initdb")
        if initdb is None:
            _unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bin = Path(str(initdb)).parent
        self.as_user: list[str] = []
        if os.geteuid() == 0:                  # the server refuses to run as root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no 'postgres' OS user to run the server")
            runuser = shutil.which("runuser")
            if runuser is None:
                _unavailable("running as root and runuser is missing")
            self.as_user = [str(runuser), "-u", "postgres", "--"]
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "server.log"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/vigil"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                               f"{self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return ""

    def init(self) -> None:
        self.sockets.mkdir()
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        self.start()
        admin = sa.create_engine(self.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE vigil"))
        admin.dispose()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # not tmp_path: pytest's base folder is private to root (0700), which the postgres user cannot enter
    root = Path(tempfile.mkdtemp(prefix="vigil-outage-"))
    try:
        c = Cluster(root)
        c.init()
        yield c
    finally:
        with contextlib.suppress(Exception):
            if "c" in locals() and c.running():
                c.stop()
        shutil.rmtree(root, ignore_errors=True)


def outage_config(port: int, store_url: str) -> str:
    """A daemon on the cluster whose first model trains once MIN_RECORDS records are in."""
    return config_text(daemon_heading(port, store_url), detector(
        "web", WEB_FEATURES,
        model={"hidden": [8], "latent": 2, "epochs": 15, "batch_size": 32, "patience": 3, "seed": 0, "device": "cpu"},
        training={"interval": "1h", "window": "30d", "min_records": MIN_RECORDS, "max_records": 2000},
        scoring={"interval": "1s", "batch_size": 500}))


class StoreDaemon(Daemon):
    """`vigil run` (exec'd) on the cluster: `outage_config` in `workdir`."""

    start_timeout = 90
    stop_timeout = 30

    def __init__(self, workdir: Path, store_url: str) -> None:
        port = free_port()
        config = write_config_file(workdir / "config.toml", outage_config(port, store_url))
        super().__init__(config, port, workdir / "state", http_timeout=20)


@dataclass
class Load:
    """Posts a batch of BATCH records every `interval` seconds from a thread; keeps every answer."""

    daemon: Daemon
    interval: float = 0.25
    acked: list[int] = field(default_factory=list)         # seq of every record answered 2xx
    sent: list[int] = field(default_factory=list)
    answers: list[tuple[float, int, str | None, str]] = field(default_factory=list)   # time, status, Retry-After
    stop: threading.Event = field(default_factory=threading.Event)
    seq: int = 0

    def records(self) -> list[dict[str, Any]]:
        rng = np.random.default_rng(self.seq)
        out = []
        for _ in range(BATCH):
            load = float(rng.uniform(0.2, 1.0))
            out.append({"ts": (START + timedelta(seconds=10 * self.seq)).isoformat(), "host": f"web-{self.seq % 4}",
                        "load": load, "cpu": 10 + 70 * load + float(rng.normal(0, 2)),
                        "latency": 40 + 120 * load + float(rng.normal(0, 4)),
                        "region": ("eu", "us", "ap")[self.seq % 3], "seq": self.seq})
            self.seq += 1
        return out

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.daemon.token}"}
        with httpx2.Client(base_url=str(self.daemon.http.base_url), timeout=20) as http:
            while not self.stop.is_set():
                batch = self.records()
                seqs = [r["seq"] for r in batch]
                self.sent += seqs
                try:
                    response = http.post("/v1/detectors/web/records", json=batch, headers=headers)
                except httpx2.TransportError as exc:
                    self.answers.append((time.monotonic(), -1, None, repr(exc)))
                else:
                    self.answers.append((time.monotonic(), response.status_code,
                                         response.headers.get("retry-after"), response.text[:200]))
                    if 200 <= response.status_code < 300:
                        self.acked += seqs
                self.stop.wait(self.interval)

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter[int]:
        return Counter(code for t, code, _, _ in self.answers if since <= t <= until)


def test_store_outage_under_load(cluster: Cluster, tmp_path: Path) -> None:
    daemon = StoreDaemon(tmp_path, cluster.url)
    load = Load(daemon)
    loader = threading.Thread(target=load.run, name="load", daemon=True)
    try:
        daemon.start()
        loader.start()
        daemon.wait_for(lambda: len(load.acked) >= 80, 60, "80 records acknowledged before the outage")
        assert daemon.status()["model"] is None                 # min_records not reached: training comes later
        before = daemon.http.get("/metrics").text
        store_errors_before = metric(before, "vigil_errors_total", component="store") or 0.0

        # --- outage --------------------------------------------------------------------------------------
        cluster.stop()
        down_at = time.monotonic()
        probes: list[tuple[str, int | None, float]] = []
        while time.monotonic() - down_at < OUTAGE_S:
            for path in ("/healthz", "/metrics"):
                started = time.monotonic()
                probes.append((path, daemon.get(path), time.monotonic() - started))
            assert daemon.alive(), f"daemon exited during the outage:\n{daemon.tail()}"
            time.sleep(1.0)
        during = daemon.http.get("/metrics").text
        up_at = time.monotonic()
        cluster.start()

        outage_answers = [a for a in load.answers if down_at + 1.0 <= a[0] <= up_at]
        codes = Counter(code for _, code, _, _ in outage_answers)
        print(f"outage: ingest answers {dict(codes)}, {len(probes)} probes of /healthz and /metrics")
        assert codes[503] >= 20, codes
        assert set(codes) <= {503}, [a for a in outage_answers if a[1] != 503][:5]
        assert all(retry is not None and int(retry) > 0 for _, code, retry, _ in outage_answers if code == 503)
        assert all("unavailable" in text for _, code, _, text in outage_answers if code == 503)
        assert 500 not in load.statuses() and -1 not in load.statuses()
        assert all(code == 200 for _, code, _ in probes), [p for p in probes if p[1] != 200][:5]
        assert max(seconds for _, _, seconds in probes) < 5.0
        store_errors_during = metric(during, "vigil_errors_total", component="store") or 0.0
        assert store_errors_during >= store_errors_before + codes[503]

        # --- recovery ------------------------------------------------------------------------------------
        def accepting_again() -> bool:
            return any(code == 200 for t, code, _, _ in load.answers if t > up_at)

        daemon.wait_for(accepting_again, 60, "ingestion to be accepted again after the restart")
        recovered_at = next(t for t, code, _, _ in load.answers if t > up_at and code == 200)
        acked_at_recovery = len(load.acked)
        daemon.wait_for(lambda: len(load.acked) >= acked_at_recovery + MIN_RECORDS, 90,
                        f"{MIN_RECORDS} more records acknowledged after the restart")
        load.stop.set()
        loader.join(timeout=30)
        after = [code for t, code, _, _ in load.answers if t > recovered_at]
        assert set(after) == {200}, Counter(after)
        print(f"recovery: first 200 {recovered_at - up_at:.1f} s after the restart; "
              f"{len(load.acked)} of {len(load.sent)} records acknowledged in all")

        def settled() -> bool:
            status = daemon.status()
            return status["model"] is not None and status["records"]["pending"] == 0

        daemon.wait_for(settled, 180, "the first model and every pending record scored")
        status = daemon.status()
        assert status["last_training"]["result"] == "success"
        assert daemon.alive()
        text = daemon.http.get("/metrics").text
        assert metric(text, "vigil_model_info", detector="web", version=str(status["model"]["version"])) == 1.0

        # --- what the store holds, read directly ---------------------------------------------------------
        engine = sa.create_engine(cluster.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text(
                    "SELECT (fields->>'seq')::int, state FROM records WHERE detector = 'web'")).all()
                models = conn.execute(sa.text("SELECT count(*) FROM model_versions WHERE detector = 'web'")).scalar()
        finally:
            engine.dispose()
        stored = Counter(seq for seq, _ in rows)
        duplicates = [seq for seq, n in stored.items() if n > 1]
        assert not duplicates, duplicates[:10]
        missing = sorted(set(load.acked) - set(stored))
        assert not missing, f"{len(missing)} acknowledged records were not stored: {missing[:10]}"
        unacked = sorted(set(stored) - set(load.acked))
        assert set(unacked) <= set(load.sent)        # a 503 whose commit still landed is possible, nothing else
        assert len(unacked) <= BATCH, unacked
        assert {state for _, state in rows} == {"scored"}
        assert models >= 1
        assert status["records"]["scored"] == len(rows)
        assert daemon.terminate() == 0
        events = [json.loads(line) for line in daemon.log.read_text(encoding="utf-8").splitlines() if line.strip()]
        print("log:", dict(Counter((e["level"], e["msg"]) for e in events if e["level"] != "info")))
        # every failure during the outage was a recognised store error, never an unexpected exception
        assert not [e for e in events if e["level"] in ("error", "critical")], [
            e for e in events if e["level"] in ("error", "critical")][:3]
    finally:
        load.stop.set()
        if loader.is_alive():
            loader.join(timeout=30)
        daemon.close()
