"""Read routes about the daemon itself: status, rejects, model versions, /metrics and /healthz."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from detector.api.deps import read_access, runtime
from detector.daemon import Runtime
from detector.store.types import ModelVersion

__all__ = ["model_json", "router"]

router = APIRouter()
RuntimeDep = Annotated[Runtime, Depends(runtime)]


def model_json(m: ModelVersion) -> dict[str, Any]:
    """A model version as `GET /v1/models` lists it (the report without its loss history)."""
    return {"detector": m.detector, "version": m.version, "status": m.status,
            "created_at": m.created_at.isoformat(), "threshold": m.threshold, "n_records": m.n_records,
            "window_start": m.window_start.isoformat() if m.window_start else None,
            "window_end": m.window_end.isoformat() if m.window_end else None,
            "report": {k: v for k, v in m.meta.get("report", {}).items() if k != "history"}}


@router.get("/v1/status", dependencies=[Depends(read_access)],
            summary="Per detector: records by state, outliers, active model, last training")
async def status(rt: RuntimeDep) -> dict[str, Any]:
    return await run_in_threadpool(rt.vigil.status)


@router.get("/v1/detectors/{name}/rejects", dependencies=[Depends(read_access)],
            summary="Recent rejected records of a detector, newest first")
async def rejects(name: str, rt: RuntimeDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
    rt.vigil.detector(name)
    return {"rejects": await run_in_threadpool(rt.vigil.repo.list_rejects, name, limit)}


@router.get("/v1/models", dependencies=[Depends(read_access)], summary="Model versions, newest first")
async def models(rt: RuntimeDep, detector: str | None = None) -> dict[str, Any]:
    rows = await run_in_threadpool(rt.vigil.repo.list_models, detector)
    return {"models": [model_json(m) for m in rows]}


@router.get("/metrics", include_in_schema=False)
async def metrics(rt: RuntimeDep) -> Response:
    data = await run_in_threadpool(generate_latest, rt.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
