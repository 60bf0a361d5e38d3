"""Review routes: outliers with filters, one outlier in full, verdicts, CSV export, maintenance windows.

Each route is a thin HTTP layer over `detector.review.ReviewService` (the same service the CLI uses).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import StreamingResponse

from detector.api.deps import read_access, require_token, runtime
from detector.daemon import Runtime
from detector.errors import InvalidWindowError, UnknownMaintenanceWindowError, UnknownOutlierError, VigilError
from detector.review import CsvExport, ReviewService, VerdictResult, detail_json, outlier_json
from detector.store.types import OutlierFilter

__all__ = ["router"]

logger = logging.getLogger(__name__)

ReviewState = Literal["unreviewed", "confirmed", "dismissed"]
# SQL integers are 64-bit: a larger id or offset made the SQLite driver raise OverflowError (a 500)
_INT64 = {"ge": -(2**63), "le": 2**63 - 1}
SqlInt = Annotated[int, Field(**_INT64)]
Verdict = Literal["confirmed", "dismissed", "unreviewed"]      # unreviewed takes a verdict back

router = APIRouter(dependencies=[Depends(read_access)])


def reviews(rt: Annotated[Runtime, Depends(runtime)]) -> ReviewService:
    return rt.vigil.reviews


Reviews = Annotated[ReviewService, Depends(reviews)]


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    note: str | None = Field(default=None, max_length=2000)
    reviewer: str | None = Field(default=None, max_length=128)


class BulkReviewRequest(ReviewRequest):
    ids: list[SqlInt] = Field(min_length=1, max_length=1000)


class MaintenanceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime
    reason: str | None = Field(default=None, max_length=2000)


def _filter(service: ReviewService, detector: str | None, since: datetime | None, until: datetime | None,
            review_state: str | None, min_score: float | None, min_ratio: float | None,
            key: str | None) -> OutlierFilter:
    if detector is not None:
        service.check_detector(detector)          # 404 for an unknown detector
    return OutlierFilter(detector, since, until, review_state, min_score, min_ratio, key)


@router.get("/v1/outliers", summary="Outliers with filters and paging")
async def list_outliers(
    service: Reviews, detector: str | None = None, since: datetime | None = None, until: datetime | None = None,
    review_state: ReviewState | None = None, min_score: float | None = None,
    min_ratio: Annotated[float | None, Query(description="minimum score / threshold")] = None,
    key: str | None = None, sort: Literal["ts", "score", "ratio", "id"] = "ts",
    order: Literal["asc", "desc"] = "desc", limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=_INT64["le"])] = 0,
) -> dict[str, Any]:
    f = _filter(service, detector, since, until, review_state, min_score, min_ratio, key)
    rows, total = await run_in_threadpool(service.query, f, limit, offset, sort, order == "desc")
    return {"outliers": [outlier_json(o) for o in rows], "total": total, "limit": limit, "offset": offset}


def _export_gate(request: Request) -> asyncio.Semaphore:
    """The app's one export slot: concurrent exports take turns a chunk at a time.

    Writing a chunk is Python work that holds the GIL (rows to objects, JSON, CSV); several worker threads
    doing it at once starve the event loop, and with it `/healthz` and every small request (four 100k-row
    exports at once held `/healthz` up to 108 ms). One chunk at a time costs the exports nothing on the
    whole (the GIL ran them one at a time anyway) and keeps the loop's waits to one thread's share.
    """
    gate: asyncio.Semaphore | None = getattr(request.app.state, "export_gate", None)
    if gate is None:
        gate = request.app.state.export_gate = asyncio.Semaphore(1)
    return gate


@router.get("/v1/outliers.csv", summary="Outliers with the same filters, as CSV")
async def export_csv(
    request: Request, service: Reviews, detector: str | None = None, since: datetime | None = None,
    until: datetime | None = None, review_state: ReviewState | None = None, min_score: float | None = None,
    min_ratio: float | None = None,
    key: str | None = None, limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> StreamingResponse:
    """Streamed: the store is read a page at a time in a worker thread, so an export holds one page in
    memory and never blocks the event loop; concurrent exports take turns a chunk at a time. The first page
    is read before the answer starts, so a store that cannot answer is still a 503."""
    f = _filter(service, detector, since, until, review_state, min_score, min_ratio, key)
    export = service.export(f, limit)
    gate = _export_gate(request)
    async with gate:
        first = await run_in_threadpool(export.next_chunk)
    return StreamingResponse(_chunks(export, first, gate), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="outliers.csv"'})


async def _chunks(export: CsvExport, first: str | None, gate: asyncio.Semaphore) -> AsyncIterator[str]:
    chunk = first
    try:
        while chunk is not None:
            yield chunk
            async with gate:
                chunk = await run_in_threadpool(export.next_chunk)
    except VigilError as exc:               # the answer has started: all that is left is to cut it short
        logger.warning("CSV export cut short", extra={"rows": export.written, "error": str(exc)})
        raise


@router.get("/v1/outliers/{outlier_id}", summary="One outlier in full, with its model and the key's scores")
async def one_outlier(outlier_id: Annotated[int, Path(**_INT64)], service: Reviews) -> dict[str, Any]:
    try:
        detail = await run_in_threadpool(service.detail, outlier_id)
    except UnknownOutlierError as exc:
        raise HTTPException(404, str(exc)) from None
    return detail_json(detail)


async def _verdict(service: ReviewService, ids: list[int], req: ReviewRequest) -> VerdictResult:
    return await run_in_threadpool(service.set_verdict, ids, req.verdict, req.note, req.reviewer)


@router.post("/v1/outliers/{outlier_id}/review", dependencies=[Depends(require_token)],
             summary="Confirm or dismiss one outlier (or take its verdict back: unreviewed)")
async def review_one(outlier_id: Annotated[int, Path(**_INT64)], req: ReviewRequest,
                     service: Reviews) -> dict[str, Any]:
    result = await _verdict(service, [outlier_id], req)
    if result.missing:
        raise HTTPException(404, str(UnknownOutlierError(outlier_id)))
    return result.to_dict()


@router.post("/v1/outliers/review", dependencies=[Depends(require_token)],
             summary="Confirm or dismiss several outliers at once (or take their verdicts back)")
async def review_many(req: BulkReviewRequest, service: Reviews) -> dict[str, Any]:
    return (await _verdict(service, req.ids, req)).to_dict()


@router.get("/v1/detectors/{name}/maintenance", summary="Maintenance windows of a detector")
async def list_windows(name: str, service: Reviews) -> dict[str, Any]:
    service.check_detector(name)
    windows = await run_in_threadpool(service.windows, name)
    return {"windows": [w.to_dict() for w in windows]}


@router.post("/v1/detectors/{name}/maintenance", dependencies=[Depends(require_token)], status_code=201,
             summary="Declare a maintenance window: its records are neither flagged nor trained on")
async def add_window(name: str, req: MaintenanceRequest, service: Reviews) -> dict[str, Any]:
    try:
        window = await run_in_threadpool(service.add_window, name, req.start, req.end, req.reason)
    except InvalidWindowError as exc:
        raise HTTPException(422, str(exc)) from None
    return window.to_dict()


@router.delete("/v1/detectors/{name}/maintenance/{window_id}", dependencies=[Depends(require_token)],
               summary="Remove a maintenance window")
async def delete_window(name: str, window_id: Annotated[int, Path(**_INT64)], service: Reviews) -> dict[str, Any]:
    service.check_detector(name)
    try:
        await run_in_threadpool(service.delete_window, name, window_id)
    except UnknownMaintenanceWindowError as exc:
        raise HTTPException(404, str(exc)) from None
    return {"deleted": window_id}
