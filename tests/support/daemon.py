"""A real `vigil run` process for tests and benches: start it, wait for /healthz, post records, read /metrics,
stop it.

Two ways to start one:

* `exec`: `python -m detector.cli.main run` in a new interpreter (what an operator runs; about 2 s, most
  of it importing torch);
* `fork`: the same CLI entry point in a process forked from a multiprocessing fork server that has
  torch and the daemon's modules imported already (a few hundred milliseconds), for tests that restart
  a daemon dozens of times. The child is a separate process with its own HTTP server and store
  connections; it runs exactly the code `vigil run` runs.

`Daemon` fails the test (pytest.fail) when the process dies or does not answer in time; `BenchDaemon`, for
the scripts in bench/, ends the run (SystemExit) instead and adds a graceful `stop` and the process's RSS.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NoReturn, Self

import httpx2
import pytest

from tests.support.prom import metric

__all__ = ["REPO", "BenchDaemon", "Daemon", "daemon_env", "vigil_run"]

REPO = Path(__file__).resolve().parents[2]

# imported once by the fork server, so that a forked daemon starts without importing them again
_PRELOAD = ["torch", "detector.cli.main", "detector.daemon", "detector.api.server", "detector.logs",
            "detector.store.db", "training.fit", "psycopg", "tests.support.daemon"]
_fork_context: ForkServerContext | None = None


def vigil_run(config: Path | str) -> list[str]:
    """The command line of `vigil run` on `config` with JSON logs, in this interpreter (run it in REPO)."""
    return [sys.executable, "-m", "detector.cli.main", "run", "--config", str(config), "--log-format", "json"]


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment of a daemon process: this one's, OpenMP threads that wait passively, unbuffered output,
    no VIGIL_CONFIG (the config is named on the command line), and `extra`."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("VIGIL_CONFIG", None)
    return env


def _forked_daemon(config: str, log: str, env: dict[str, str]) -> None:
    """The body of a forked daemon: `env` added, stdout and stderr to the log file, then `vigil run`."""
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, write_through=True)
    from detector.cli.main import cli

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
    """One daemon on `config` (which must name `port`); its token is read from `state_dir`.

    Each start logs to its own file beside the config, `{name}-{start}.log`. `start_timeout` and
    `stop_timeout` are the seconds `start` and `terminate` wait by default (a subclass may change them).
    As a context manager it is closed (killed if still running) on the way out.
    """

    start_timeout: float = 60
    stop_timeout: float = 20

    def __init__(self, config: Path, port: int, state_dir: Path, detector: str = "web", fork: bool = False,
                 name: str = "daemon", http_timeout: float = 30) -> None:
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
        self.http = httpx2.Client(base_url=self.url, timeout=http_timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fail(self, message: str) -> NoReturn:
        """What a dead or silent daemon does to its caller: fail the test."""
        pytest.fail(message)

    # -- process -----------------------------------------------------------------------------
    @property
    def log(self) -> Path:
        return self.config.parent / f"{self.name}-{self.starts}.log"

    def launch(self, env: dict[str, str] | None = None) -> None:
        """Start the process without waiting for it to serve; `env` is added to its environment."""
        assert not self.alive(), "already running"
        self.starts += 1
        if self.fork:
            process = _forkserver().Process(target=_forked_daemon, args=(str(self.config), str(self.log), env or {}),
                                            daemon=True, name=self.name)
            process.start()
            self._process, self._popen = process, None
            return
        with self.log.open("wb") as out:
            self._popen = subprocess.Popen(vigil_run(self.config), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                           env=daemon_env(**(env or {})))
        self._process = None

    def start(self, timeout: float | None = None, env: dict[str, str] | None = None) -> float:
        """Start and wait until /healthz answers; returns the seconds that took."""
        started = time.monotonic()
        self.launch(env)
        self.wait_healthy(self.start_timeout if timeout is None else timeout)
        return time.monotonic() - started

    def wait_healthy(self, timeout: float = 60) -> None:
        self.wait_for(self._healthy, timeout, "/healthz to answer", poll=0.03)

    @property
    def pid(self) -> int | None:
        if self._popen is not None:
            return self._popen.pid
        return self._process.pid if self._process is not None else None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The process of an exec'd daemon (None when forked, or before the first start)."""
        return self._popen

    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs (or was never started)."""
        if self._popen is not None:
            return self._popen.poll()
        if self._process is not None:
            return self._process.exitcode
        return None

    def alive(self) -> bool:
        return self.pid is not None and self.returncode() is None

    def _signal(self, signum: int) -> None:
        pid = self.pid
        assert pid is not None, f"{self.name} was never started"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def _wait(self, timeout: float) -> int | None:
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=timeout)
        elif self._process is not None:
            self._process.join(timeout)
        return self.returncode()

    def kill(self, timeout: float = 15) -> None:
        """SIGKILL, and wait until the process is gone."""
        self._signal(signal.SIGKILL)
        if self._wait(timeout) is None:
            self.fail(f"{self.name} (pid {self.pid}) still running {timeout} s after SIGKILL")

    def terminate(self, timeout: float | None = None) -> int:
        """SIGTERM; returns the exit status."""
        timeout = self.stop_timeout if timeout is None else timeout
        self._signal(signal.SIGTERM)
        code = self._wait(timeout)
        if code is None:
            self.fail(f"{self.name} still running {timeout} s after SIGTERM:\n{self.tail()}")
        return code

    def close(self) -> None:
        """Kill the process if it still runs (for `finally`), and close the HTTP client."""
        if self.alive():
            self._signal(signal.SIGKILL)
            self._wait(15)
        self.http.close()

    # -- waiting -----------------------------------------------------------------------------
    def _healthy(self) -> bool:
        return self.get("/healthz", timeout=2) == 200

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
        """Poll `condition` until it holds; fail at the deadline or when the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                self.fail(f"{self.name} exited with {self.returncode()} while waiting for {what}:\n{self.tail()}")
            if condition():
                return
            if time.monotonic() >= deadline:
                self.fail(f"{self.name}: timed out after {timeout} s waiting for {what}:\n{self.tail()}")
            time.sleep(poll)

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    # -- HTTP --------------------------------------------------------------------------------
    @property
    def token(self) -> str:
        return (self.state_dir / "api-token").read_text(encoding="utf-8").strip()

    def get(self, path: str, timeout: float | None = None) -> int | None:
        """The status code of GET `path` (the client's timeout unless given), or None when nothing answers."""
        try:
            if timeout is None:
                return self.http.get(path).status_code
            return self.http.get(path, timeout=timeout).status_code
        except httpx2.TransportError:
            return None

    def post(self, records: list[dict[str, Any]], client: httpx2.Client | None = None,
             timeout: float = 30) -> httpx2.Response:
        """POST records to the detector (no assertion on the answer; transport errors propagate)."""
        return (client or self.http).post(
            f"{self.url}/v1/detectors/{self.detector}/records", json=records, timeout=timeout,
            headers={"Authorization": f"Bearer {self.token}"})

    def ingest(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """POST records to the detector, assert that it answered 200; its answer (accepted, rejected)."""
        response = self.post(records)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def status(self) -> dict[str, Any]:
        """This detector's entry of /v1/status."""
        response = self.http.get("/v1/status")
        response.raise_for_status()
        status: dict[str, Any] = response.json()["detectors"][self.detector]
        return status

    def settled(self) -> bool:
        """A model is active and nothing is left to score."""
        status = self.status()
        return status["model"] is not None and status["records"]["pending"] == 0

    def metrics(self) -> str:
        response = self.http.get("/metrics")
        response.raise_for_status()
        return response.text

    def metric(self, name: str, **labels: str) -> float | None:
        return metric(self.metrics(), name, **labels)


class BenchDaemon(Daemon):
    """A daemon for the scripts in bench/: a failure kills it and ends the run (SystemExit); `stop` ends it
    gracefully."""

    start_timeout = 120
    stop_timeout = 60

    def fail(self, message: str) -> NoReturn:
        self.close()
        raise SystemExit(message)

    def stop(self) -> int | None:
        """SIGTERM and wait up to stop_timeout s, then SIGKILL; the exit status, None where it was killed (or
        never started). Closes the HTTP client."""
        code = self.returncode()
        if self.alive():
            self._signal(signal.SIGTERM)
            code = self._wait(self.stop_timeout)
        self.close()
        return code

    def rss(self) -> int:
        """The resident set size of the process in bytes, from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")
