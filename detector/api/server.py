"""Serve the API with uvicorn, or just run the jobs when HTTP is disabled, until a stop signal."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

import uvicorn

from detector.api.app import create_app
from detector.daemon import Runtime

__all__ = ["serve"]

logger = logging.getLogger(__name__)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


class _Server(uvicorn.Server):
    """uvicorn's server, telling systemd READY=1 once the socket listens (after the lifespan started jobs)."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self._runtime = runtime

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._runtime.ready()


def serve(runtime: Runtime, config_path: Path | None = None) -> None:
    """Block until SIGTERM or SIGINT; jobs start before and stop after the HTTP server.

    SIGHUP reloads `config_path` in a background thread (the handler itself does no work).
    """
    if config_path is not None:
        def reload(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=runtime.reload, args=(config_path,), name="vigil-reload", daemon=True).start()

        signal.signal(signal.SIGHUP, reload)
    http = runtime.config.http
    if not http.enabled:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        runtime.start()
        runtime.ready()
        try:
            stop.wait()
        finally:
            runtime.stop()
        return
    app = create_app(runtime)
    server = _Server(uvicorn.Config(
        app, host=http.host, port=http.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=10, lifespan="on"), runtime)
    # uvicorn re-raises the stop signal once it has shut down gracefully; with the default
    # SIGTERM disposition the process would then die by the signal instead of exiting 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    logger.info("HTTP API listening", extra={"url": f"http://{http.host}:{http.port}"})
    server.run()
