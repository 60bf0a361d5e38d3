"""The daemon's core: ingest validated records, report status; owns per-detector runtime state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from detector.config import Config, DetectorConfig
from detector.errors import UnknownDetectorError
from detector.metrics import UNKNOWN_DETECTOR, Metrics
from detector.records import Batch, RecordValidator, Rejection, ValidRecord
from detector.store.repository import IngestScores, Repository

__all__ = ["IngestResult", "IngestScorer", "Vigil"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    rejected: list[Rejection]


class IngestScorer(Protocol):
    """Scores a batch as it is ingested (the daemon's Scorer), then stores it through `store`."""

    def score_and_store(self, name: str, records: Sequence[ValidRecord],
                        store: Callable[[IngestScores | None], None],
                        numeric: npt.NDArray[np.float64] | None = None) -> bool: ...


class Vigil:
    """Holds the config, the repository and the metrics; the jobs and the API act through it.

    With a `scorer` (the running daemon sets one) accepted records are scored as they are ingested and
    stored already scored; without one they are stored pending, for the score job.
    """

    def __init__(self, config: Config, repo: Repository, metrics: Metrics) -> None:
        self.config = config
        self.repo = repo
        self.metrics = metrics
        self.scorer: IngestScorer | None = None
        self.stopping = threading.Event()
        self._validators: dict[str, RecordValidator] = {}
        self.use_config(config)

    def use_config(self, config: Config) -> None:
        """Switch to a new configuration (a reload): detectors added, removed or changed."""
        self._validators = {
            name: RecordValidator(det.feature_schema, det.ts_field, det.key_field)
            for name, det in config.detectors.items()
        }
        self.config = config

    def detector(self, name: str) -> DetectorConfig:
        try:
            return self.config.detectors[name]
        except KeyError:
            raise UnknownDetectorError(name, list(self.config.detectors)) from None

    def count_unknown_detector(self) -> None:
        self.metrics.records_rejected.labels(UNKNOWN_DETECTOR, "unknown_detector").inc()

    def ingest(self, name: str, raws: list[Any], source: str, origin: str | None = None,
               watermark: tuple[str, str] | None = None, start_index: int = 0) -> IngestResult:
        """Validate a batch and store its good records and its rejections in one transaction."""
        validator = self._validators.get(name)
        if validator is None:
            self.count_unknown_detector()
            raise UnknownDetectorError(name, list(self.config.detectors))
        batch: Batch = validator.validate_many(raws, start_index)

        def store(scores: IngestScores | None) -> None:
            self.repo.add_batch(name, source, batch.accepted, batch.rejected, origin, watermark, scores)

        if self.scorer is not None and batch.accepted:
            self.scorer.score_and_store(name, batch.accepted, store, batch.numeric)
        else:
            store(None)
        if batch.accepted:
            self.metrics.records_ingested.labels(name, source).inc(len(batch.accepted))
        for rejection in batch.rejected:
            self.metrics.records_rejected.labels(name, rejection.reason).inc()
        return IngestResult(len(batch.accepted), batch.rejected)

    def reject_whole(self, name: str, source: str, reason: str, message: str,
                     origin: str | None = None, raw: str | None = None) -> Rejection:
        """Record that a whole body or file was refused (malformed, too large, unreadable)."""
        # a body that is not JSON may hold NUL bytes, which PostgreSQL text cannot store
        rejection = Rejection(None, None, reason, message, None if raw is None else raw.replace("\x00", "\\u0000"))
        if name in self.config.detectors:
            self.repo.add_batch(name, source, [], [rejection], origin)
            self.metrics.records_rejected.labels(name, reason).inc()
        else:
            self.count_unknown_detector()
        return rejection

    def status(self) -> dict[str, Any]:
        """Per detector: records by state, outliers, the active model and the last training run."""
        counts = self.repo.counts()
        detectors: dict[str, Any] = {}
        for name, det in self.config.detectors.items():
            c = counts.get(name)
            model = self.repo.active_model(name, with_weights=False)
            run = self.repo.last_training_run(name)
            detectors[name] = {
                "source": det.source.type,
                "records": {"pending": c.pending if c else 0, "scored": c.scored if c else 0,
                            "rejected": c.rejected if c else 0},
                "outliers": c.outliers if c else 0,
                "model": None if model is None else {
                    "version": model.version, "trained_at": model.created_at.isoformat(),
                    "threshold": model.threshold, "n_records": model.n_records,
                    "expected_outlier_rate": model.meta.get("threshold", {}).get("expected_outlier_rate"),
                },
                "last_training": None if run is None else {
                    "result": run.result, "trigger": run.trigger, "started_at": run.started_at.isoformat(),
                    "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                    "message": run.message, "model_version": run.model_version,
                    "duration_s": run.duration_s,
                    "diversity": None if run.diversity is None else {
                        "status": run.diversity.get("status"),
                        "problems": [c for c in run.diversity.get("checks", []) if c.get("status") != "ok"]},
                },
            }
        return {"detectors": detectors}
