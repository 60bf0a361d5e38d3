"""The HTTP API: record ingestion, status, outliers, models, /metrics and health."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DataError, DBAPIError, StatementError
from starlette.responses import Response

from detector import __version__
from detector.api_review import review_router
from detector.daemon import Runtime
from detector.errors import StorageError, UnknownDetectorError
from detector.records import parse_json_body
from detector.web import review_page_router

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _value_refused(exc: StorageError) -> bool:
    """The database or its driver refused a value the request supplied (NUL in PostgreSQL text, a time that
    overflows when converted to UTC): the store is fine and retrying cannot help, so not a 503."""
    cause = exc.cause
    if isinstance(cause, DataError):
        return True
    return (isinstance(cause, StatementError) and not isinstance(cause, DBAPIError)
            and isinstance(cause.orig, OverflowError | ValueError))


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def require_token(request: Request) -> None:
    """Writes need `Authorization: Bearer <token>` (the token file named in config)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = _runtime(request).token
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


def read_access(request: Request) -> None:
    """Reads are open unless `http.read_requires_token` is set."""
    if _runtime(request).config.http.read_requires_token:
        require_token(request)


async def _read_body(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(runtime: Runtime, manage_jobs: bool = True) -> FastAPI:
    """The ASGI app; with `manage_jobs` its lifespan starts and stops the scheduled jobs."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_jobs:
            runtime.start()
        try:
            yield
        finally:
            if manage_jobs:
                await run_in_threadpool(runtime.stop)

    app = FastAPI(title="Vigil", version=__version__, lifespan=lifespan,
                  description="Anomaly-detection monitoring daemon: ingest records, read outliers.")
    app.state.runtime = runtime

    @app.exception_handler(StorageError)
    async def storage_unavailable(request: Request, exc: StorageError) -> JSONResponse:
        if _value_refused(exc):
            return _error(422, f"the store cannot take a value of this request: {exc.cause.__class__.__name__}: "
                               f"{getattr(exc.cause, 'orig', exc.cause)}")
        runtime.vigil.metrics.errors.labels("store").inc()
        logger.warning("request failed: store unavailable", extra={"path": request.url.path, "error": str(exc)})
        return _error(503, "the store is unavailable; retry later")

    @app.exception_handler(UnknownDetectorError)
    async def unknown_detector(request: Request, exc: UnknownDetectorError) -> JSONResponse:
        return _error(404, str(exc))

    @app.post("/v1/detectors/{name}/records", dependencies=[Depends(require_token)],
              summary="Ingest records (JSON array, one JSON object, or NDJSON)")
    async def ingest(name: str, request: Request) -> JSONResponse:
        vigil = runtime.vigil
        http = runtime.config.http
        det = vigil.detector(name) if name in runtime.config.detectors else None
        if det is None:
            vigil.count_unknown_detector()
            raise UnknownDetectorError(name, list(runtime.config.detectors))
        if det.source.type != "http":
            return _error(409, f"detector {name!r} reads its {det.source.type} source; "
                               "only detectors with source type 'http' take records over HTTP")
        body = await _read_body(request, http.max_body_bytes)
        if body is None:
            rejection = await run_in_threadpool(vigil.reject_whole, name, "http", "too_large",
                                                f"body larger than max_body_bytes={http.max_body_bytes}")
            return _error(413, rejection.message, accepted=0, rejected=[rejection.to_dict()])
        try:
            raws = parse_json_body(body, request.headers.get("content-type", ""))
        except (ValueError, UnicodeDecodeError) as exc:
            rejection = await run_in_threadpool(vigil.reject_whole, name, "http", "malformed",
                                                f"body is not valid JSON: {exc}", None, body[:2000].decode(
                                                    "utf-8", "replace"))
            return _error(400, rejection.message, accepted=0, rejected=[rejection.to_dict()])
        if len(raws) > http.max_batch_records:
            rejection = await run_in_threadpool(
                vigil.reject_whole, name, "http", "too_many_records",
                f"{len(raws)} records in one request; max_batch_records={http.max_batch_records}")
            return _error(413, rejection.message, accepted=0, rejected=[rejection.to_dict()])
        result = await run_in_threadpool(vigil.ingest, name, raws, "http", "http")
        body_out = {"accepted": result.accepted, "rejected": [r.to_dict() for r in result.rejected]}
        if result.rejected:
            body_out["error"] = f"{len(result.rejected)} of {len(raws)} records rejected; the others were stored"
            return JSONResponse(body_out, status_code=422)
        return JSONResponse(body_out, status_code=200)

    @app.get("/v1/status", dependencies=[Depends(read_access)],
             summary="Per detector: records by state, outliers, active model, last training")
    async def status() -> dict[str, Any]:
        return await run_in_threadpool(runtime.vigil.status)

    @app.get("/v1/detectors/{name}/rejects", dependencies=[Depends(read_access)],
             summary="Recent rejected records of a detector, newest first")
    async def rejects(name: str, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        runtime.vigil.detector(name)
        return {"rejects": await run_in_threadpool(runtime.vigil.repo.list_rejects, name, limit)}

    @app.get("/v1/models", dependencies=[Depends(read_access)], summary="Model versions, newest first")
    async def models(detector: str | None = None) -> dict[str, Any]:
        rows = await run_in_threadpool(runtime.vigil.repo.list_models, detector)
        return {"models": [
            {"detector": m.detector, "version": m.version, "status": m.status,
             "created_at": m.created_at.isoformat(), "threshold": m.threshold, "n_records": m.n_records,
             "window_start": m.window_start.isoformat() if m.window_start else None,
             "window_end": m.window_end.isoformat() if m.window_end else None,
             "report": {k: v for k, v in m.meta.get("report", {}).items() if k != "history"}}
            for m in rows]}

    app.include_router(review_router(runtime, require_token, read_access))
    app.include_router(review_page_router())

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        data = await run_in_threadpool(generate_latest, runtime.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
