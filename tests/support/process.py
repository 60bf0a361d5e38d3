"""A server the tests run as a subprocess (Prometheus, Alertmanager, a daemon): its output in a file, stopped
with SIGTERM and then SIGKILL; and a bounded wait that fails the test with the processes' last log lines."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["Process", "wait_for"]


class Process:
    """A subprocess with its output in a file, stopped with SIGTERM (then SIGKILL) in `stop`."""

    def __init__(self, name: str, args: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return f"--- last lines of {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, *procs: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            proc.check_alive()
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n" + "\n".join(p.tail() for p in procs))
