"""`POST /v1/detectors/NAME/records`: the API's half of the http source (it reads the body, the source
ingests it).

The source runs in worker threads of ingestion's own (`INGEST_THREADS` at a time), so that requests waiting for a
store that cannot take writes never take the threads that reads run in; and each request waits for the store at
most `store.write_timeout` from the moment its body is read (its wait for a thread included), then answers 503
with `Retry-After`.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from detector.api.deps import error, require_token, runtime
from detector.config import HttpSourceConfig
from detector.daemon import Runtime
from detector.errors import UnknownDetectorError
from detector.sources.http import IDEMPOTENCY_KEY, BatchKeys, HttpReply, HttpSource
from detector.store.session import write_deadline

__all__ = ["INGEST_THREADS", "router"]

router = APIRouter()

INGEST_THREADS = 16     # ingest requests running at once; others wait for a thread (within their write timeout)


def ingest_threads(app: FastAPI) -> anyio.CapacityLimiter:
    """The app's limiter of ingest threads (made in the event loop, on the first request)."""
    limiter: anyio.CapacityLimiter | None = getattr(app.state, "ingest_threads", None)
    if limiter is None:
        limiter = app.state.ingest_threads = anyio.CapacityLimiter(INGEST_THREADS)
    return limiter


def _batch_keys(app: FastAPI) -> BatchKeys:
    """The idempotency keys of the app's requests being stored now (made on the first request)."""
    keys: BatchKeys | None = getattr(app.state, "batch_keys", None)
    if keys is None:
        keys = app.state.batch_keys = BatchKeys()
    return keys


def _receive(source: HttpSource, body: bytes | None, content_type: str, key: str | None, deadline: float) -> HttpReply:
    with write_deadline(deadline):
        return source.receive(body, content_type, key)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed `limit` bytes."""
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


SourceT = TypeVar("SourceT")


def pushed_source(rt: Runtime, name: str, kind: type[SourceT], type_name: str, what: str) -> SourceT | JSONResponse:
    """The [source] section of detector `name` when it is of the pushed `kind`; a 409 answer when the detector
    reads another source; `UnknownDetectorError` (counted) when there is no such detector."""
    det = rt.config.detectors.get(name)
    if det is None:
        rt.vigil.count_unknown_detector()
        raise UnknownDetectorError(name, list(rt.config.detectors))
    if not isinstance(det.source, kind):
        return error(409, f"detector {name!r} reads its {det.source.type} source; "
                          f"only detectors with source type {type_name!r} take {what}")
    return det.source


@router.post("/v1/detectors/{name}/records", dependencies=[Depends(require_token)],
             summary="Ingest records (JSON array, one JSON object, or NDJSON); an optional Idempotency-Key header "
                     "makes a retried batch stored once")
async def ingest(name: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> JSONResponse:
    cfg = pushed_source(rt, name, HttpSourceConfig, "http", "records over HTTP")
    if isinstance(cfg, JSONResponse):
        return cfg
    vigil, http = rt.vigil, rt.config.http
    body = await read_body(request, http.max_body_bytes)
    deadline = time.monotonic() + vigil.repo.write_timeout
    source = HttpSource(cfg, vigil.sink(name, "http"), http, _batch_keys(request.app))
    receive = partial(_receive, source, body, request.headers.get("content-type", ""),
                      request.headers.get(IDEMPOTENCY_KEY), deadline)
    reply = await anyio.to_thread.run_sync(receive, limiter=ingest_threads(request.app))
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers or None)
