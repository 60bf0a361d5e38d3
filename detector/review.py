"""The review service: what people do with outliers, shared by the HTTP API, the review page and the CLI.

Queries with filters, one outlier in full, verdicts (counted in metrics and logged), maintenance windows,
and the JSON and CSV forms of an outlier. Detector names are checked against the running config.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from detector.config import Config
from detector.errors import (
    InvalidWindowError,
    UnknownDetectorError,
    UnknownMaintenanceWindowError,
    UnknownOutlierError,
)
from detector.metrics import Metrics
from detector.store.reviews import Reviews
from detector.store.types import MaintenanceWindow, OutlierDetail, OutlierFilter, OutlierView, SortKey

__all__ = ["CSV_COLUMNS", "ReviewService", "VerdictResult", "outlier_json", "outliers_csv"]

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["id", "detector", "ts", "key", "score", "threshold", "model_version", "review_state",
               "top_feature", "fields", "expected"]


@dataclass(frozen=True, slots=True)
class VerdictResult:
    updated: list[int]
    missing: list[int]
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"updated": self.updated, "missing": self.missing, "verdict": self.verdict}


def outlier_json(o: OutlierView) -> dict[str, Any]:
    """An outlier as the API and `vigil outliers show --json` give it."""
    return {
        "id": o.id, "detector": o.detector, "ts": o.ts.isoformat(), "key": o.key, "score": o.score,
        "threshold": o.threshold, "ratio": o.score / o.threshold if o.threshold else None,
        "model_version": o.model_version, "review_state": o.review_state, "fields": o.fields,
        "expected": o.expected, "contributions": o.contributions, "ood": o.ood, "record_id": o.record_id,
        "created_at": o.created_at.isoformat(),
    }


def detail_json(detail: OutlierDetail) -> dict[str, Any]:
    """One outlier in full: the outlier, its review, its model and the key's scores around it."""
    body = outlier_json(detail.outlier)
    body["review"] = {"state": detail.outlier.review_state, "note": detail.review_note,
                      "reviewer": detail.reviewer,
                      "reviewed_at": detail.reviewed_at.isoformat() if detail.reviewed_at else None}
    body["model"] = detail.model
    body["history"] = detail.history
    return body


def outliers_csv(rows: Sequence[OutlierView]) -> str:
    """Outliers as CSV: one row each, record fields and expected values as JSON columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for o in rows:
        top = o.contributions[0]["feature"] if o.contributions else ""
        writer.writerow([o.id, o.detector, o.ts.isoformat(), o.key or "", o.score, o.threshold, o.model_version,
                         o.review_state, top, json.dumps(o.fields, default=str), json.dumps(o.expected, default=str)])
    return out.getvalue()


class ReviewService:
    """Reviews through the store, with the running config's detectors and the daemon's metrics."""

    def __init__(self, config: Callable[[], Config], reviews: Reviews, metrics: Metrics | None = None) -> None:
        self._config = config
        self._reviews = reviews
        self._metrics = metrics

    def check_detector(self, name: str) -> None:
        """Raise `UnknownDetectorError` unless `name` is configured."""
        detectors = self._config().detectors
        if name not in detectors:
            raise UnknownDetectorError(name, list(detectors))

    def query(self, f: OutlierFilter, limit: int = 50, offset: int = 0, sort: SortKey = "ts",
              descending: bool = True) -> tuple[list[OutlierView], int]:
        """One page of outliers matching `f`, and how many match in all (none for an unknown detector)."""
        return self._reviews.query(f, limit, offset, sort, descending)

    def export_csv(self, f: OutlierFilter, limit: int) -> tuple[str, int]:
        """The newest `limit` outliers matching `f` as CSV, and how many rows it holds."""
        rows, _ = self.query(f, limit, 0, "ts", True)
        return outliers_csv(rows), len(rows)

    def detail(self, outlier_id: int, around: int = 30) -> OutlierDetail:
        """One outlier in full; `UnknownOutlierError` when there is none with that id."""
        detail = self._reviews.detail(outlier_id, around)
        if detail is None:
            raise UnknownOutlierError(outlier_id)
        return detail

    def set_verdict(self, ids: Sequence[int], verdict: str, note: str | None,
                    reviewer: str | None) -> VerdictResult:
        """Record a verdict on outliers (counted per detector in metrics, logged)."""
        updated, missing = self._reviews.set_verdict(ids, verdict, note, reviewer)
        if self._metrics is not None:
            for _, detector in updated:
                self._metrics.review_verdicts.labels(detector, verdict).inc()
        logger.info("verdict stored", extra={"verdict": verdict, "outliers": len(updated), "reviewer": reviewer})
        return VerdictResult([i for i, _ in updated], missing, verdict)

    def windows(self, detector: str) -> list[MaintenanceWindow]:
        """The maintenance windows of `detector` (none for a name that has none)."""
        return self._reviews.windows(detector)

    def add_window(self, detector: str, start: datetime, end: datetime, reason: str | None) -> MaintenanceWindow:
        """Declare a maintenance window; `InvalidWindowError` for times without a zone or an empty span."""
        self.check_detector(detector)
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidWindowError("start and end need a time zone (e.g. ...Z)")
        if end <= start:
            raise InvalidWindowError("a maintenance window must end after it starts")
        return self._reviews.add_window(detector, start, end, reason)

    def delete_window(self, detector: str, window_id: int) -> None:
        """Remove a maintenance window; `UnknownMaintenanceWindowError` when the detector has no such window."""
        if not self._reviews.delete_window(detector, window_id):
            raise UnknownMaintenanceWindowError(detector, window_id)
