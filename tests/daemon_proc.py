"""A real `vigil run` process for tests: start it, wait for /healthz, post records, read /metrics, stop it.

Two ways to start one:

* `exec`: `python -m detector.cli run` in a new interpreter (what an operator runs; about 2 s, most of
  it importing torch);
* `fork`: the same CLI entry point in a process forked from a multiprocessing fork server that has
  torch and the daemon's modules imported already (a few hundred milliseconds), for tests that restart
  a daemon dozens of times. The child is a separate process with its own HTTP server and store
  connections; it runs exactly the code `vigil run` runs.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Daemon", "free_port", "metric"]

REPO = Path(__file__).resolve().parents[1]

# imported once by the fork server, so that a forked daemon starts without importing them again
_PRELOAD = ["torch", "detector.cli", "detector.daemon", "detector.server", "detector.logs", "detector.store.db",
            "training.fit", "psycopg", "tests.daemon_proc"]
_fork_context: ForkServerContext | None = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition, or None when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def _forked_daemon(config: str, log: str) -> None:
    """The body of a forked daemon: stdout and stderr to the log file, then `vigil run`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, write_through=True)
    from detector.cli import cli

    cli.main(["run", "--config", config, "--log-format", "json"], prog_name="vigil")


def _forkserver() -> ForkServerContext:
    global _fork_context
    if _fork_context is None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")    # read by OpenMP when torch is imported
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        _fork_context = context
    return _fork_context


class Daemon:
    """One daemon on `config` (which must name `port`); its token is read from `state_dir`."""

    def __init__(self, config: Path, port: int, state_dir: Path, detector: str = "web", fork: bool = False,
                 name: str = "daemon") -> None:
        self.config = config
        self.port = port
        self.state_dir = state_dir
        self.detector = detector
        self.fork = fork
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.starts = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._process: BaseProcess | None = None
        self.http = httpx2.Client(base_url=self.url, timeout=30)

    # -- process -----------------------------------------------------------------------------
    @property
    def log(self) -> Path:
        return self.config.parent / f"{self.name}-{self.starts}.log"

    def launch(self) -> None:
        """Start the process without waiting for it to serve."""
        assert not self.alive(), "already running"
        self.starts += 1
        if self.fork:
            process = _forkserver().Process(target=_forked_daemon, args=(str(self.config), str(self.log)),
                                            daemon=True, name=self.name)
            process.start()
            self._process, self._popen = process, None
            return
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
        env.pop("VIGIL_CONFIG", None)
        with self.log.open("wb") as out:
            self._popen = subprocess.Popen(
                [sys.executable, "-m", "detector.cli", "run", "--config", str(self.config), "--log-format", "json"],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self._process = None

    def start(self, timeout: float = 60) -> float:
        """Start and wait until /healthz answers; returns the seconds that took."""
        started = time.monotonic()
        self.launch()
        self.wait_healthy(timeout)
        return time.monotonic() - started

    def wait_healthy(self, timeout: float = 60) -> None:
        self.wait_for(self._healthy, timeout, "/healthz to answer", poll=0.03)

    @property
    def pid(self) -> int | None:
        if self._popen is not None:
            return self._popen.pid
        return self._process.pid if self._process is not None else None

    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs (or was never started)."""
        if self._popen is not None:
            return self._popen.poll()
        if self._process is not None:
            return self._process.exitcode
        return None

    def alive(self) -> bool:
        return self.pid is not None and self.returncode() is None

    def _wait(self, timeout: float) -> int | None:
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=timeout)
        elif self._process is not None:
            self._process.join(timeout)
        return self.returncode()

    def kill(self, timeout: float = 15) -> None:
        """SIGKILL, and wait until the process is gone."""
        pid = self.pid
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if self._wait(timeout) is None:
            pytest.fail(f"{self.name} (pid {pid}) still running {timeout} s after SIGKILL")

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM; returns the exit status."""
        pid = self.pid
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        code = self._wait(timeout)
        if code is None:
            pytest.fail(f"{self.name} still running {timeout} s after SIGTERM:\n{self.tail()}")
        return code

    def close(self) -> None:
        """Kill the process if it still runs (for `finally`), and close the HTTP client."""
        if self.alive():
            pid = self.pid
            assert pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait(15)
        self.http.close()

    # -- waiting -----------------------------------------------------------------------------
    def _healthy(self) -> bool:
        try:
            return self.http.get("/healthz", timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
        """Poll `condition` until it holds; fail at the deadline or when the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                pytest.fail(f"{self.name} exited with {self.returncode()} while waiting for {what}:\n{self.tail()}")
            if condition():
                return
            if time.monotonic() >= deadline:
                pytest.fail(f"{self.name}: timed out after {timeout} s waiting for {what}:\n{self.tail()}")
            time.sleep(poll)

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    # -- HTTP --------------------------------------------------------------------------------
    @property
    def token(self) -> str:
        return (self.state_dir / "api-token").read_text(encoding="utf-8").strip()

    def post(self, records: list[dict[str, Any]], client: httpx2.Client | None = None,
             timeout: float = 30) -> httpx2.Response:
        """POST records to the detector (no assertion on the answer; transport errors propagate)."""
        return (client or self.http).post(
            f"{self.url}/v1/detectors/{self.detector}/records", json=records, timeout=timeout,
            headers={"Authorization": f"Bearer {self.token}"})

    def status(self) -> dict[str, Any]:
        """This detector's entry of /v1/status."""
        response = self.http.get("/v1/status")
        response.raise_for_status()
        status: dict[str, Any] = response.json()["detectors"][self.detector]
        return status

    def metrics(self) -> str:
        response = self.http.get("/metrics")
        response.raise_for_status()
        return response.text

    def metric(self, name: str, **labels: str) -> float | None:
        return metric(self.metrics(), name, **labels)
