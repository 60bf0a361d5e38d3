"""`POST /v1/detectors/NAME/otlp/v1/metrics`: OTLP/HTTP metric exports for a detector whose source is otlp.

Point an OpenTelemetry exporter at this URL (the Collector's `otlphttp` exporter: `endpoint` set to
`http://HOST:PORT/v1/detectors/NAME/otlp`, to which it adds `/v1/metrics`), with the API token in an
`Authorization: Bearer ...` header. The API reads the body; `detector.sources.otlp.OtlpSource` ingests it.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from detector.api.deps import require_token, runtime
from detector.api.ingest import ingest_threads, pushed_source, read_body
from detector.config.sources import OtlpSourceConfig
from detector.daemon import Runtime
from detector.sources.otlp import OtlpSource

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/detectors/{name}/otlp/v1/metrics", dependencies=[Depends(require_token)],
             summary="Ingest an OTLP/HTTP metrics export (protobuf or JSON, gzip allowed)")
async def export_metrics(name: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    cfg = pushed_source(rt, name, OtlpSourceConfig, "otlp", "OTLP exports")
    if isinstance(cfg, JSONResponse):
        return cfg
    http = rt.config.http
    body = await read_body(request, http.max_body_bytes)
    source = OtlpSource(cfg, rt.vigil.sink(name, "otlp"), http, rt.config.detectors[name].feature_schema.names)
    receive = partial(source.receive, body, request.headers.get("content-type", ""),
                      request.headers.get("content-encoding", ""))
    reply = await anyio.to_thread.run_sync(receive, limiter=ingest_threads(request.app))    # reads keep their threads
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)
