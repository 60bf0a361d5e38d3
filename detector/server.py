"""Serve the API with uvicorn, or just run the jobs when HTTP is disabled, until a stop signal."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

import uvicorn

from detector.api import create_app
from detector.daemon import Runtime

__all__ = ["serve"]

logger = logging.getLogger(__name__)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def serve(runtime: Runtime) -> None:
    """Block until SIGTERM or SIGINT; jobs start before and stop after the HTTP server."""
    http = runtime.config.http
    if not http.enabled:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        runtime.start()
        try:
            stop.wait()
        finally:
            runtime.stop()
        return
    app = create_app(runtime)
    server = uvicorn.Server(uvicorn.Config(
        app, host=http.host, port=http.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=10, lifespan="on"))
    # uvicorn re-raises the stop signal once it has shut down gracefully; with the default
    # SIGTERM disposition the process would then die by the signal instead of exiting 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    logger.info("HTTP API listening", extra={"url": f"http://{http.host}:{http.port}"})
    server.run()
