"""systemd integration without dependencies: sd_notify messages and the watchdog's liveness pings."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

__all__ = ["Heartbeats", "Notifier", "Watchdog"]

logger = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; does nothing when the daemon is not under systemd."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> bool:
        """Send `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`... in one datagram; True when sent."""
        if not self._address:
            return False
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            with self._lock, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(target)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            logger.warning("sd_notify failed", extra={"socket": self._address, "error": str(exc)})
            return False
        return True


class Heartbeats:
    """When each periodic job last started and finished; the watchdog judges liveness from them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._limits: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._finished: dict[str, float] = {}

    def watch(self, job_id: str, stall_after_s: float) -> None:
        """Judge `job_id` stalled when it neither finished nor is young within `stall_after_s`."""
        with self._lock:
            self._limits[job_id] = stall_after_s
            self._finished.setdefault(job_id, self._clock())

    def forget(self, job_id: str) -> None:
        with self._lock:
            for table in (self._limits, self._started, self._finished):
                table.pop(job_id, None)

    def wrap(self, job_id: str, func: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            with self._lock:
                self._started[job_id] = self._clock()
            try:
                func()
            finally:
                with self._lock:
                    self._finished[job_id] = self._clock()
                    self._started.pop(job_id, None)
        return run

    def stalled(self) -> list[str]:
        """Jobs that have been running, or silent, for longer than their limit."""
        now = self._clock()
        with self._lock:
            return sorted(job for job, limit in self._limits.items()
                          if (job in self._started and now - self._started[job] > limit)
                          or now - self._finished.get(job, now) > limit)


class Watchdog:
    """Pings WATCHDOG=1 every half period while no job is stalled, with a STATUS= line each time."""

    def __init__(self, notifier: Notifier, heartbeats: Heartbeats, status: Callable[[], str],
                 interval_s: float | None = None) -> None:
        self._notifier = notifier
        self._heartbeats = heartbeats
        self._status = status
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        own = pid is None or pid == str(os.getpid())
        self.interval_s = interval_s if interval_s is not None else (
            int(usec) / 2e6 if usec and usec.isdigit() and own else None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: tuple[str, ...] = ()

    def tick(self) -> bool:
        """One round: ping when live (True), else log the stalled jobs once and skip the ping."""
        stalled = tuple(self._heartbeats.stalled())
        try:
            status = self._status()
        except Exception as exc:  # a status line must never stop the pings
            status = f"status unavailable: {exc.__class__.__name__}"
        if stalled:
            if stalled != self._reported:
                logger.error("jobs stalled: no watchdog ping until they recover", extra={"jobs": list(stalled)})
            self._reported = stalled
            self._notifier.send(f"STATUS=stalled: {', '.join(stalled)}")
            return False
        self._reported = ()
        self._notifier.send("WATCHDOG=1", f"STATUS={status}")
        return True

    def start(self) -> None:
        if self._thread is not None:
            return

        def loop() -> None:
            period = self.interval_s or 30.0      # without a watchdog, refresh STATUS= every 30 s
            while not self._stop.wait(period):
                self.tick()

        self._thread = threading.Thread(target=loop, name="vigil-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
