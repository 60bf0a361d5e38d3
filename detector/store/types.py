"""The store's value objects: what its reads return and its writes take, free of SQLAlchemy sessions.

Every other store module imports these from here, and this module imports nothing of the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

__all__ = [
    "BATCH_KEY_PREFIX",
    "REVIEW_STATES",
    "VERDICTS",
    "DetectorCounts",
    "IngestScores",
    "MaintenanceWindow",
    "ModelVersion",
    "OutlierDetail",
    "OutlierFilter",
    "OutlierView",
    "PendingRecord",
    "ScoredRecord",
    "SortKey",
    "TrainingRun",
]

VERDICTS = ("confirmed", "dismissed")
REVIEW_STATES = ("unreviewed", *VERDICTS)
SortKey = Literal["ts", "score", "ratio", "id"]
# A watermark whose name starts with this holds a batch's idempotency key (an HTTP `Idempotency-Key`): stored with
# its batch, it keeps the batch's outcome too, `{"request": <the value given>, "accepted": n, "rejected": [...]}`
BATCH_KEY_PREFIX = "batch-key:"


class PendingRecord(NamedTuple):
    """A stored record as the scorer and the trainer read it (a NamedTuple: immutable, and several times
    cheaper to create than a frozen dataclass, which matters at one per record)."""

    id: int
    ts: datetime
    key: str | None
    fields: dict[str, Any]


class ScoredRecord(NamedTuple):
    """The scoring result of one pending record; `outlier` holds the explanation when flagged, and
    `suppressed` why alerting kept a record over the threshold from being flagged."""

    id: int
    score: float
    outlier: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None
    suppressed: str | None = None


@dataclass(frozen=True, slots=True)
class IngestScores:
    """Scores of a batch's accepted records, computed before they are stored (scoring on ingest): the
    records go in as `scored` in the same transaction, with their outliers. Per record (in batch order)
    its score; by record index, the explanations of the flagged ones, their out-of-distribution notes and
    why alert hygiene held back a record over the threshold."""

    model_version_id: int
    threshold: float
    scores: list[float]
    outliers: dict[int, dict[str, Any]]
    ood: dict[int, dict[str, Any]]
    suppressed: dict[int, str]


@dataclass(frozen=True, slots=True)
class ModelVersion:
    id: int
    detector: str
    version: int
    status: str
    created_at: datetime
    activated_at: datetime | None
    window_start: datetime | None
    window_end: datetime | None
    n_records: int
    threshold: float
    meta: dict[str, Any]
    weights: bytes | None = None
    problem: str | None = None      # why the stored metadata cannot be read (then `meta` is empty)


@dataclass(frozen=True, slots=True)
class OutlierView:
    id: int
    record_id: int | None
    detector: str
    ts: datetime
    key: str | None
    fields: dict[str, Any]
    score: float
    threshold: float
    model_version: int
    contributions: list[dict[str, Any]]
    expected: dict[str, Any]
    review_state: str
    created_at: datetime
    ood: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TrainingRun:
    id: int
    detector: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    result: str
    message: str | None
    n_records: int | None
    duration_s: float | None
    train_loss: float | None
    val_loss: float | None
    model_version: int | None
    diversity: dict[str, Any] | None = None


@dataclass(slots=True)
class DetectorCounts:
    pending: int = 0
    scored: int = 0
    rejected: int = 0
    outliers: int = 0
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutlierFilter:
    detector: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    review_state: str | None = None
    min_score: float | None = None
    min_ratio: float | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    id: int
    detector: str
    start: datetime
    end: datetime
    reason: str | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "detector": self.detector, "start": self.start.isoformat(),
                "end": self.end.isoformat(), "reason": self.reason, "created_at": self.created_at.isoformat()}


@dataclass(frozen=True, slots=True)
class OutlierDetail:
    outlier: OutlierView
    review_note: str | None
    reviewer: str | None
    reviewed_at: datetime | None
    model: dict[str, Any]
    history: list[dict[str, Any]]
