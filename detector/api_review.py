"""Review endpoints: outliers with filters, one outlier in full, verdicts, CSV export, maintenance windows."""

from __future__ import annotations

import csv
import io
import json
import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from detector.daemon import Runtime
from detector.store.repository import OutlierView
from detector.store.reviews import OutlierFilter

__all__ = ["outlier_json", "review_router"]

logger = logging.getLogger(__name__)

ReviewState = Literal["unreviewed", "confirmed", "dismissed"]
# SQL integers are 64-bit: a larger id or offset made the SQLite driver raise OverflowError (a 500)
_INT64 = {"ge": -(2**63), "le": 2**63 - 1}
SqlInt = Annotated[int, Field(**_INT64)]
Verdict = Literal["confirmed", "dismissed"]


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


def outlier_json(o: OutlierView) -> dict[str, Any]:
    return {
        "id": o.id, "detector": o.detector, "ts": o.ts.isoformat(), "key": o.key, "score": o.score,
        "threshold": o.threshold, "ratio": o.score / o.threshold if o.threshold else None,
        "model_version": o.model_version, "review_state": o.review_state, "fields": o.fields,
        "expected": o.expected, "contributions": o.contributions, "ood": o.ood, "record_id": o.record_id,
        "created_at": o.created_at.isoformat(),
    }


def _filter(runtime: Runtime, detector: str | None, since: datetime | None, until: datetime | None,
            review_state: str | None, min_score: float | None, min_ratio: float | None,
            key: str | None) -> OutlierFilter:
    if detector is not None:
        runtime.vigil.detector(detector)          # 404 for an unknown detector
    return OutlierFilter(detector, since, until, review_state, min_score, min_ratio, key)


def review_router(runtime: Runtime, require_token: Any, read_access: Any) -> APIRouter:
    """The review API; `require_token` guards writes, `read_access` reads (open unless configured)."""
    router = APIRouter(dependencies=[Depends(read_access)])
    reviews = runtime.vigil.repo.reviews
    metrics = runtime.vigil.metrics

    @router.get("/v1/outliers", summary="Outliers with filters and paging")
    async def list_outliers(
        detector: str | None = None, since: datetime | None = None, until: datetime | None = None,
        review_state: ReviewState | None = None, min_score: float | None = None,
        min_ratio: Annotated[float | None, Query(description="minimum score / threshold")] = None,
        key: str | None = None, sort: Literal["ts", "score", "ratio", "id"] = "ts",
        order: Literal["asc", "desc"] = "desc", limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=_INT64["le"])] = 0,
    ) -> dict[str, Any]:
        f = _filter(runtime, detector, since, until, review_state, min_score, min_ratio, key)
        rows, total = await run_in_threadpool(reviews.query, f, limit, offset, sort, order == "desc")
        return {"outliers": [outlier_json(o) for o in rows], "total": total, "limit": limit, "offset": offset}

    @router.get("/v1/outliers.csv", summary="Outliers with the same filters, as CSV")
    async def export_csv(
        detector: str | None = None, since: datetime | None = None, until: datetime | None = None,
        review_state: ReviewState | None = None, min_score: float | None = None, min_ratio: float | None = None,
        key: str | None = None, limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> Response:
        f = _filter(runtime, detector, since, until, review_state, min_score, min_ratio, key)
        rows, _ = await run_in_threadpool(reviews.query, f, limit, 0, "ts", True)
        return Response(outliers_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="outliers.csv"'})

    @router.get("/v1/outliers/{outlier_id}", summary="One outlier in full, with its model and the key's scores")
    async def one_outlier(outlier_id: Annotated[int, Path(**_INT64)]) -> dict[str, Any]:
        detail = await run_in_threadpool(reviews.detail, outlier_id)
        if detail is None:
            raise HTTPException(404, f"no outlier {outlier_id}")
        body = outlier_json(detail.outlier)
        body["review"] = {"state": detail.outlier.review_state, "note": detail.review_note,
                          "reviewer": detail.reviewer,
                          "reviewed_at": detail.reviewed_at.isoformat() if detail.reviewed_at else None}
        body["model"] = detail.model
        body["history"] = detail.history
        return body

    async def _verdict(ids: list[int], req: ReviewRequest) -> dict[str, Any]:
        updated, missing = await run_in_threadpool(reviews.set_verdict, ids, req.verdict, req.note, req.reviewer)
        for _, detector in updated:
            metrics.review_verdicts.labels(detector, req.verdict).inc()
        logger.info("verdict stored", extra={"verdict": req.verdict, "outliers": len(updated),
                                             "reviewer": req.reviewer})
        return {"updated": [i for i, _ in updated], "missing": missing, "verdict": req.verdict}

    @router.post("/v1/outliers/{outlier_id}/review", dependencies=[Depends(require_token)],
                 summary="Confirm or dismiss one outlier")
    async def review_one(outlier_id: Annotated[int, Path(**_INT64)], req: ReviewRequest) -> dict[str, Any]:
        result = await _verdict([outlier_id], req)
        if result["missing"]:
            raise HTTPException(404, f"no outlier {outlier_id}")
        return result

    @router.post("/v1/outliers/review", dependencies=[Depends(require_token)],
                 summary="Confirm or dismiss several outliers at once")
    async def review_many(req: BulkReviewRequest) -> dict[str, Any]:
        return await _verdict(req.ids, req)

    @router.get("/v1/detectors/{name}/maintenance", summary="Maintenance windows of a detector")
    async def list_windows(name: str) -> dict[str, Any]:
        runtime.vigil.detector(name)
        windows = await run_in_threadpool(reviews.windows, name)
        return {"windows": [w.to_dict() for w in windows]}

    @router.post("/v1/detectors/{name}/maintenance", dependencies=[Depends(require_token)], status_code=201,
                 summary="Declare a maintenance window: its records are neither flagged nor trained on")
    async def add_window(name: str, req: MaintenanceRequest) -> dict[str, Any]:
        runtime.vigil.detector(name)
        if req.start.tzinfo is None or req.end.tzinfo is None:
            raise HTTPException(422, "start and end need a time zone (e.g. ...Z)")
        if req.end <= req.start:
            raise HTTPException(422, "end must be after start")
        window = await run_in_threadpool(reviews.add_window, name, req.start, req.end, req.reason)
        return window.to_dict()

    @router.delete("/v1/detectors/{name}/maintenance/{window_id}", dependencies=[Depends(require_token)],
                   summary="Remove a maintenance window")
    async def delete_window(name: str, window_id: Annotated[int, Path(**_INT64)]) -> dict[str, Any]:
        runtime.vigil.detector(name)
        if not await run_in_threadpool(reviews.delete_window, name, window_id):
            raise HTTPException(404, f"detector {name!r} has no maintenance window {window_id}")
        return {"deleted": window_id}

    return router


def outliers_csv(rows: list[OutlierView]) -> str:
    """Outliers as CSV: one row each, record fields and expected values as JSON columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "detector", "ts", "key", "score", "threshold", "model_version", "review_state",
                     "top_feature", "fields", "expected"])
    for o in rows:
        top = o.contributions[0]["feature"] if o.contributions else ""
        writer.writerow([o.id, o.detector, o.ts.isoformat(), o.key or "", o.score, o.threshold, o.model_version,
                         o.review_state, top, json.dumps(o.fields, default=str), json.dumps(o.expected, default=str)])
    return out.getvalue()


