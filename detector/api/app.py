"""The HTTP API: `create_app` wires the routers (ingest, status, review, the review page) to a runtime."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from detector import __version__
from detector.api import ingest, otlp, review, status
from detector.api.deps import install_error_handlers
from detector.api.web import review_page_router
from detector.daemon import Runtime

__all__ = ["create_app"]


def _lifespan(runtime: Runtime, manage_jobs: bool) -> Callable[[FastAPI], Any]:
    """With `manage_jobs` the app's lifespan starts the scheduled jobs and stops them at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_jobs:
            runtime.start()
        try:
            yield
        finally:
            if manage_jobs:
                await run_in_threadpool(runtime.stop)

    return lifespan


def create_app(runtime: Runtime, manage_jobs: bool = True) -> FastAPI:
    """The ASGI app; with `manage_jobs` its lifespan starts and stops the scheduled jobs.

    `/openapi.json` is always served; the interactive pages `/docs` and `/redoc` only with `http.api_docs`:
    they load their scripts from a CDN (unpinned, without integrity checks) into the origin whose session
    storage holds the review page's token.
    """
    docs = runtime.config.http.api_docs
    app = FastAPI(title="Vigil", version=__version__, lifespan=_lifespan(runtime, manage_jobs),
                  description="Anomaly-detection monitoring daemon: ingest records, read outliers.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None)
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(ingest.router)
    app.include_router(otlp.router)
    app.include_router(status.router)
    app.include_router(review.router)
    app.include_router(review_page_router())
    return app
