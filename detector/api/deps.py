"""What every API route shares: the runtime of the app, token checks, error bodies and error handlers."""

from __future__ import annotations

import hmac
import logging
import math
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from detector.daemon import Runtime
from detector.errors import StorageError, StoreRefusedValueError, UnknownDetectorError

__all__ = ["encodable", "error", "install_error_handlers", "read_access", "require_token", "runtime"]

logger = logging.getLogger(__name__)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """An error answer: `{"error": message, ...}`; 503 comes with `Retry-After`. Text that UTF-8 cannot
    encode (a lone surrogate a client sent as `\\ud800`) is written escaped, so the answer never fails."""
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse(encodable({"error": message, **extra}), status_code=status, headers=headers)


def encodable(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, text, numbers) as JSON can always write it: lone surrogates become
    `\\udXXX` escapes, bytes are decoded the same way, inf and nan and anything else not JSON become text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {encodable(str(k)): encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)                   # JSON has no inf or nan (1e400 in a body is inf)
    if value is None or isinstance(value, bool | int | float):
        return value
    return encodable(str(value))


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


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """An HTTPException (the 401 of `require_token`, a route's 404) as `{"error": ...}`, like every other error."""
    status, detail = getattr(exc, "status_code", 500), getattr(exc, "detail", str(exc))
    response = error(status, detail if isinstance(detail, str) else str(detail))
    response.headers.update(getattr(exc, "headers", None) or {})
    return response


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 for a request that fails validation: `{"error": "LOC: MESSAGE; ...", "detail": [...]}` (FastAPI's
    list, each with loc, msg, type and the input), every string encodable (see `encodable`)."""
    errors = encodable(list(exc.errors())) if isinstance(exc, RequestValidationError) else []
    summary = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors[:5])
    return error(422, f"invalid request: {summary or exc}", detail=errors)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client went away (or was cut off by http.body_timeout) before its body arrived: nothing to answer."""
    logger.info("request abandoned: the client left before its body arrived", extra={"path": request.url.path})
    return Response(status_code=400)


def install_error_handlers(app: FastAPI) -> None:
    """A store that cannot answer is 503 (a value it refuses, 422); an unknown detector is 404; a request that
    fails validation is 422 with an encodable body."""
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(UnknownDetectorError, _unknown_detector)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(StarletteHTTPException, _http_error)
