"""`POST /v1/detectors/NAME/otlp/v1/metrics`: OTLP/HTTP metric exports for a detector whose source is otlp.

Point an OpenTelemetry exporter at this URL (the Collector's `otlphttp` exporter: `endpoint` set to
`http://HOST:PORT/v1/detectors/NAME/otlp`, to which it adds `/v1/metrics`), with the API token in an
`Authorization: Bearer ...` header. The API reads the body; `detector.sources.otlp.OtlpSource` ingests it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from detector.api.deps import error, require_token, runtime
from detector.api.ingest import read_body
from detector.config.sources import OtlpSourceConfig
from detector.daemon import Runtime
from detector.errors import UnknownDetectorError
from detector.sources.otlp import OtlpSource

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/detectors/{name}/otlp/v1/metrics", dependencies=[Depends(require_token)],
             summary="Ingest an OTLP/HTTP metrics export (protobuf or JSON, gzip allowed)")
async def export_metrics(name: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    vigil = rt.vigil
    det = rt.config.detectors.get(name)
    if det is None:
        vigil.count_unknown_detector()
        raise UnknownDetectorError(name, list(rt.config.detectors))
    if not isinstance(det.source, OtlpSourceConfig):
        return error(409, f"detector {name!r} reads its {det.source.type} source; "
                          "only detectors with source type 'otlp' take OTLP exports")
    http = rt.config.http
    body = await read_body(request, http.max_body_bytes)
    source = OtlpSource(det.source, vigil.sink(name, "otlp"), http, det.feature_schema.names)
    reply = await run_in_threadpool(source.receive, body, request.headers.get("content-type", ""),
                                    request.headers.get("content-encoding", ""))
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)
