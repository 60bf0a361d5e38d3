"""What every API route shares: the runtime of the app, token checks, error bodies and error handlers."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from detector.daemon import Runtime
from detector.errors import StorageError, StoreRefusedValueError, UnknownDetectorError

__all__ = ["error", "install_error_handlers", "read_access", "require_token", "runtime"]

logger = logging.getLogger(__name__)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """An error answer: `{"error": message, ...}`; 503 comes with `Retry-After`."""
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def runtime(request: Request) -> Runtime:
    """The daemon's runtime, which `create_app` puts in the app's state."""
    value: Runtime = request.app.state.runtime
    return value


def require_token(request: Request) -> None:
    """Writes need `Authorization: Bearer <token>` (the token file named in config)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = runtime(request).token
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


def read_access(request: Request) -> None:
    """Reads are open unless `http.read_requires_token` is set."""
    if runtime(request).config.http.read_requires_token:
        require_token(request)


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, StoreRefusedValueError):
        cause = exc.cause
        return error(422, f"the store cannot take a value of this request: {cause.__class__.__name__}: "
                          f"{getattr(cause, 'orig', cause)}")
    runtime(request).vigil.metrics.errors.labels("store").inc()
    logger.warning("request failed: store unavailable", extra={"path": request.url.path, "error": str(exc)})
    return error(503, "the store is unavailable; retry later")


async def _unknown_detector(request: Request, exc: Exception) -> JSONResponse:
    return error(404, str(exc))


def install_error_handlers(app: FastAPI) -> None:
    """A store that cannot answer is 503 (a value it refuses, 422); an unknown detector is 404."""
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(UnknownDetectorError, _unknown_detector)
