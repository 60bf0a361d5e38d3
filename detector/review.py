"""The review service: what people do with outliers, shared by the HTTP API, the review page and the CLI.

Queries with filters, one outlier in full, verdicts (counted in metrics and logged), maintenance windows,
and the JSON and CSV forms of an outlier. Detector names are checked against the running config.
CSV exports are read from the store a page at a time (`CsvExport`) and written with every text cell that
a spreadsheet would run as a formula neutralised (`spreadsheet_safe`).
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
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

__all__ = ["CSV_COLUMNS", "EXPORT_PAGE_ROWS", "CsvExport", "ReviewService", "VerdictResult", "detail_json",
           "outlier_json", "outliers_csv", "spreadsheet_safe"]

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["id", "detector", "ts", "key", "score", "threshold", "model_version", "review_state",
               "top_feature", "fields", "expected"]
EXPORT_PAGE_ROWS = 1000        # outliers an export writes per chunk, and reads at most per query
_MIN_STREAM_ROWS = 100         # a detector's page when an export merges several

# A text cell starting with one of these is run as a formula by spreadsheets (CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text instead of running it: text starting with `=`, `+`, `-`,
    `@`, a tab or a carriage return gets a leading `'` (OWASP's advice); plain numbers written as text
    (`-3.5`) and every non-text value are left as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


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


def outliers_csv(rows: Sequence[OutlierView], header: bool = True) -> str:
    """Outliers as CSV: one row each, record fields and expected values as JSON columns, text cells made
    spreadsheet-safe (the JSON columns start with `{`)."""
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(CSV_COLUMNS)
    for o in rows:
        top = o.contributions[0]["feature"] if o.contributions else ""
        writer.writerow([spreadsheet_safe(cell) for cell in (
            o.id, o.detector, o.ts.isoformat(), o.key or "", o.score, o.threshold, o.model_version, o.review_state,
            top, json.dumps(o.fields, default=str), json.dumps(o.expected, default=str))])
    return out.getvalue()


def _newest_first(o: OutlierView) -> tuple[datetime, int]:
    return o.ts, o.id


class CsvExport:
    """One CSV export of the newest `limit` outliers matching a filter, written `page_rows` at a time.

    Each detector's outliers are read with a keyset cursor on (ts, id) through the store's (detector, ts)
    index, at most `page_rows` at a time (split between detectors when there are several), and merged
    newest first: memory stays bounded by about two pages however many rows the export holds, and
    outliers that arrive meanwhile neither repeat nor shift rows. `next_chunk` blocks on store queries
    (the API runs it in a worker thread); iterating gives every chunk. Once it is exhausted, `written`
    says how many rows it held and `more` whether others match beyond `limit`.
    """

    def __init__(self, reviews: Reviews, f: OutlierFilter, limit: int, page_rows: int = EXPORT_PAGE_ROWS) -> None:
        if limit < 1 or page_rows < 1:
            raise ValueError(f"an export needs limit >= 1 and page_rows >= 1, got {limit} and {page_rows}")
        self._reviews, self._filter, self.limit, self._page_rows = reviews, f, limit, page_rows
        self._rows: Iterator[OutlierView] | None = None       # opened by the first chunk
        self._header_sent = False
        self._done = False
        self.written = 0
        self.more = False

    def _merged(self) -> Iterator[OutlierView]:
        """Every detector's matching outliers, newest first; each detector's first page is read at once."""
        detectors = ([self._filter.detector] if self._filter.detector
                     else sorted({d for d, _ in self._reviews.verdict_counts()}))
        size = max(min(_MIN_STREAM_ROWS, self._page_rows), self._page_rows // max(1, len(detectors)))
        streams = [self._stream(replace(self._filter, detector=d), size) for d in detectors]
        return heapq.merge(*streams, key=_newest_first, reverse=True)

    def _stream(self, f: OutlierFilter, size: int) -> Iterator[OutlierView]:
        after: tuple[datetime, int] | None = None
        while True:
            rows = self._reviews.export_page(f, after, size)
            yield from rows
            if len(rows) < size:
                return
            after = (rows[-1].ts, rows[-1].id)

    def next_chunk(self) -> str | None:
        """The next piece of CSV text (the header with the first page, then one page each), None at the end."""
        if self._done:
            return None
        if self._rows is None:
            self._rows = self._merged()
        header = not self._header_sent
        self._header_sent = True
        want = min(self._page_rows, self.limit - self.written)
        if want == 0:                               # the limit is reached: do others match?
            self.more = next(self._rows, None) is not None
            self._done = True
            return None
        rows = list(islice(self._rows, want))
        if len(rows) < want:
            self._done = True
        self.written += len(rows)
        return outliers_csv(rows, header=header) if rows or header else None

    def __iter__(self) -> Iterator[str]:
        while (chunk := self.next_chunk()) is not None:
            yield chunk


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

    def export(self, f: OutlierFilter, limit: int, page_rows: int = EXPORT_PAGE_ROWS) -> CsvExport:
        """The newest `limit` outliers matching `f` as CSV, read from the store a page at a time as it is
        consumed (nothing is read here)."""
        return CsvExport(self._reviews, f, limit, page_rows)

    def count(self, f: OutlierFilter) -> int:
        """How many outliers match `f`."""
        return self._reviews.query(f, 1, 0)[1]

    def detail(self, outlier_id: int, around: int = 30) -> OutlierDetail:
        """One outlier in full; `UnknownOutlierError` when there is none with that id."""
        detail = self._reviews.detail(outlier_id, around)
        if detail is None:
            raise UnknownOutlierError(outlier_id)
        return detail

    def set_verdict(self, ids: Sequence[int], verdict: str, note: str | None,
                    reviewer: str | None) -> VerdictResult:
        """Record a verdict on outliers (counted per detector in metrics, logged); `unreviewed` takes verdicts
        back (the outliers leave the training window again unless `review.train_on_unreviewed`), clearing
        reviewer, time and note (unless a note is given); it is logged but not counted as a verdict."""
        updated, missing = self._reviews.set_verdict(ids, verdict, note, reviewer)
        if self._metrics is not None and verdict != "unreviewed":
            for _, detector in updated:
                self._metrics.review_verdicts.labels(detector, verdict).inc()
        logger.info("verdict cleared" if verdict == "unreviewed" else "verdict stored",
                    extra={"verdict": verdict, "outliers": len(updated), "reviewer": reviewer})
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
