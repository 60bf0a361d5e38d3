"""`POST /v1/detectors/NAME/records`: the API's half of the http source (it reads the body, the source
ingests it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from detector.api.deps import error, require_token, runtime
from detector.config import HttpSourceConfig
from detector.daemon import Runtime
from detector.errors import UnknownDetectorError
from detector.sources.http import HttpSource

__all__ = ["router"]

router = APIRouter()


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


@router.post("/v1/detectors/{name}/records", dependencies=[Depends(require_token)],
             summary="Ingest records (JSON array, one JSON object, or NDJSON)")
async def ingest(name: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> JSONResponse:
    vigil = rt.vigil
    det = rt.config.detectors.get(name)
    if det is None:
        vigil.count_unknown_detector()
        raise UnknownDetectorError(name, list(rt.config.detectors))
    if not isinstance(det.source, HttpSourceConfig):
        return error(409, f"detector {name!r} reads its {det.source.type} source; "
                          "only detectors with source type 'http' take records over HTTP")
    http = rt.config.http
    body = await read_body(request, http.max_body_bytes)
    source = HttpSource(det.source, vigil.sink(name, "http"), http)
    reply = await run_in_threadpool(source.receive, body, request.headers.get("content-type", ""))
    return JSONResponse(reply.body, status_code=reply.status)
