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
from starlette.types import ASGIApp

from detector.api.app import create_app
from detector.api.guard import HostCheck, allowed_host_names, guarded_protocol
from detector.api.sockets import listen
from detector.daemon import Runtime

__all__ = ["KEEP_ALIVE_S", "serve", "server_app"]

logger = logging.getLogger(__name__)

KEEP_ALIVE_S = 5        # an idle connection between two requests is closed after this many seconds


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


class _Server(uvicorn.Server):
    """uvicorn's server: once it serves on the sockets (after the lifespan started the jobs) it logs where and
    tells systemd READY=1."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self._runtime = runtime

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            urls = [_url(sock) for sock in sockets or []]
            logger.info("HTTP API listening", extra={"url": urls[0] if len(urls) == 1 else urls})
            self._runtime.ready()


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def server_app(runtime: Runtime) -> ASGIApp:
    """The API; while reads are open, behind the Host check (see detector.api.guard)."""
    http = runtime.config.http
    app: ASGIApp = create_app(runtime)
    if not http.read_requires_token:
        app = HostCheck(app, allowed_host_names(http))
    return app


def serve(runtime: Runtime, config_path: Path | None = None, sockets: list[socket.socket] | None = None) -> None:
    """Block until SIGTERM or SIGINT; jobs start before and stop after the HTTP server.

    `sockets` are the API's listening sockets (`listen`); without them they are opened here, before any job
    starts. SIGHUP reloads `config_path` in a background thread (the handler itself does no work).
    """
    http = runtime.config.http
    if http.enabled:
        for warning in http.exposure_warnings():
            logger.warning("HTTP API exposed", extra={"warning": warning})
        sockets = sockets if sockets is not None else listen(http)
    if config_path is not None:
        def reload(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=runtime.reload, args=(config_path,), name="vigil-reload", daemon=True).start()

        signal.signal(signal.SIGHUP, reload)
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
    server = _Server(uvicorn.Config(
        server_app(runtime), host=http.host, port=http.port, http=guarded_protocol(http), log_config=None,
        access_log=False, timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=10, lifespan="on"), runtime)
    # uvicorn re-raises the stop signal once it has shut down gracefully; with the default
    # SIGTERM disposition the process would then die by the signal instead of exiting 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run(sockets=sockets)
