"""Read routes about the daemon itself: status, rejects, model versions, /metrics, /healthz and /readyz.

`/healthz` is liveness: it answers while the process serves HTTP and touches nothing else. `/readyz` is readiness
for writes: it checks that the store would take a write now (`Repository.probe_write`) and answers 503 with
`Retry-After` when it would not, with what the store's writes saw last.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from detector.api.deps import error, read_access, runtime
from detector.daemon import Runtime
from detector.errors import StorageError
from detector.store.session import StoreState
from detector.store.types import ModelVersion

__all__ = ["READY_PROBE_S", "model_json", "router"]

READY_PROBE_S = 2.0     # how long /readyz waits for the store at most (or store.write_timeout, when shorter)

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


def _store_json(state: StoreState, writable: bool) -> dict[str, Any]:
    failure = state.failure
    return {"writable": writable, "last_write": state.last_write.isoformat() if state.last_write else None,
            "last_failure": None if failure is None else {"at": failure.at.isoformat(), "operation": failure.operation,
                                                          "error": failure.error}}


@router.get("/readyz", summary="Readiness: whether the store takes writes now (503 with Retry-After when not)",
            responses={503: {"description": "the store cannot take writes now"}})
async def readyz(rt: RuntimeDep) -> Response:
    repo = rt.vigil.repo
    timeout = min(READY_PROBE_S, repo.write_timeout)
    problem = None
    try:
        with anyio.fail_after(timeout + 1.0):       # a probe stuck in a driver call is left to finish on its own
            await anyio.to_thread.run_sync(repo.probe_write, timeout, abandon_on_cancel=True)
    except StorageError as exc:
        problem = f"{exc.__class__.__name__} ({exc.cause.__class__.__name__})"
    except TimeoutError:
        problem = f"no answer from the store within {timeout + 1.0:g} s"
    if problem is not None:
        return error(503, f"the store cannot take writes now: {problem}; retry later", ready=False,
                     store=_store_json(repo.state, False))
    return JSONResponse({"ready": True, "store": _store_json(repo.state, True)})
