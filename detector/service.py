"""The daemon's core: the record path (validate -> score -> store) and status; owns per-detector state."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from detector.config import Config, DetectorConfig
from detector.errors import UnknownDetectorError
from detector.metrics import UNKNOWN_DETECTOR, Metrics
from detector.records import Batch, IngestResult, RecordValidator, Rejection, ValidRecord
from detector.review import ReviewService
from detector.store.repository import Repository
from detector.store.types import IngestScores, ModelVersion

__all__ = ["DetectorSink", "IngestScorer", "Vigil", "window_anchor"]

logger = logging.getLogger(__name__)


class IngestScorer(Protocol):
    """Scores a batch as it is ingested (the daemon's Scorer); the record path stores what it returns."""

    def score_on_ingest(self, name: str, records: Sequence[ValidRecord],
                        numeric: npt.NDArray[np.float64] | None = None) -> IngestScores | None:
        """The batch's scores, or None when it should wait as pending for the score job (never raises but
        for the store's errors: a scoring failure is counted and logged, and the records wait)."""
        ...

    def count_ingest(self, name: str, scores: IngestScores, seconds: float) -> None:
        """Count a stored scored batch in the metrics."""
        ...


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
        self.reviews = ReviewService(lambda: self.config, repo.reviews, metrics)
        self._validators: dict[str, RecordValidator] = {}
        # k-of-n confirmation reads the exceedances stored before a batch: batches of such a detector are
        # scored and stored one at a time (on ingest and by the score job alike)
        self._serial: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self.use_config(config)

    def use_config(self, config: Config) -> None:
        """Switch to a new configuration (a reload): detectors added, removed or changed."""
        self._validators = {
            name: RecordValidator(det.feature_schema, det.ts_field, det.key_field, max_future=det.max_ahead,
                                  max_extra_fields=det.max_extra_fields)
            for name, det in config.detectors.items()
        }
        self.config = config

    def serialised(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """Held while a batch of `name` is scored and stored, when its scores depend on earlier batches."""
        if self.detector(name).alerting.confirm_k > 1:
            return self._serial[name]
        return contextlib.nullcontext()

    def sink(self, name: str, source: str) -> DetectorSink:
        """The narrow view a source of type `source` gets of the daemon, for detector `name`."""
        return DetectorSink(self, name, source)

    def detector(self, name: str) -> DetectorConfig:
        try:
            return self.config.detectors[name]
        except KeyError:
            raise UnknownDetectorError(name, list(self.config.detectors)) from None

    def count_unknown_detector(self) -> None:
        self.metrics.records_rejected.labels(UNKNOWN_DETECTOR, "unknown_detector").inc()

    def ingest(self, name: str, raws: list[Any], source: str, origin: str | None = None,
               watermark: tuple[str, str] | None = None, start_index: int = 0) -> IngestResult:
        """Validate a batch, score its good records (when a model is active) and store them with the batch's
        rejections in one transaction."""
        validator = self._validators.get(name)
        if validator is None:
            self.count_unknown_detector()
            raise UnknownDetectorError(name, list(self.config.detectors))
        batch: Batch = validator.validate_many(raws, start_index)
        scorer = self.scorer if batch.accepted else None
        started = time.perf_counter()
        with self.serialised(name):
            scores = None if scorer is None else scorer.score_on_ingest(name, batch.accepted, batch.numeric)
            self.repo.add_batch(name, source, batch.accepted, batch.rejected, origin, watermark, scores)
        if scorer is not None and scores is not None:
            scorer.count_ingest(name, scores, time.perf_counter() - started)
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
                # a detector without a model: why, in words (None once it has one)
                "waiting": None if model is not None else (
                    "training: the first model is being trained" if run is not None and run.result == "running"
                    else self._waiting(name, det)),
                # versions set aside because they could not be loaded (newest first), and why
                "rejected_models": [_rejected(m) for m in self.repo.rejected_models(name)],
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

    def window_since(self, name: str) -> datetime | None:
        """Start of detector `name`'s training window: training.window before its anchor (`window_anchor`);
        None when the detector has no records."""
        det = self.detector(name)
        anchor = window_anchor(self.repo.latest_ts(name), det, datetime.now(UTC))
        return None if anchor is None else anchor - timedelta(seconds=det.training.window)

    def _waiting(self, name: str, det: DetectorConfig) -> str:
        """Why detector `name` has no model yet: its training window against training.min_records."""
        need = det.training.min_records
        since = self.window_since(name)
        latest = self.repo.latest_ts(name)
        if since is None or latest is None:
            return f"waiting: no records yet (training needs training.min_records={need})"
        count = self.repo.count_window(name, since, det.review.states_into_training)
        if count < need:
            anchor = since + timedelta(seconds=det.training.window)
            return (f"waiting: window holds {count} of {need} records (training.window back from "
                    f"{anchor.isoformat(timespec='seconds')}); the newest record is at "
                    f"{latest.isoformat(timespec='seconds')}")
        return f"waiting: window holds {count} records, enough to train: the next training run makes a model"


def window_anchor(latest: datetime | None, det: DetectorConfig, now: datetime) -> datetime | None:
    """Where a training window ends: the newest record, or now where that record lies ahead of now (a
    record timed in the future must not push the window past every other record); None without records.
    The demo source's simulated time runs ahead of the clock: its window ends at its newest record."""
    if latest is None or det.max_ahead is None:
        return latest
    return min(latest, now)


def _rejected(model: ModelVersion) -> dict[str, Any]:
    """A rejected version as status shows it: its number, why it could not be loaded, and when."""
    rejected = model.meta.get("rejected") or {}
    return {"version": model.version, "reason": rejected.get("reason") or model.problem,
            "rejected_at": rejected.get("at"), "fallback_version": rejected.get("fallback")}


class DetectorSink:
    """`detector.sources.base.Sink` for one detector and source type, backed by the daemon."""

    def __init__(self, vigil: Vigil, name: str, source: str) -> None:
        self._vigil = vigil
        self._name = name
        self._source = source

    @property
    def detector(self) -> str:
        return self._name

    @property
    def ts_field(self) -> str:
        return self._vigil.detector(self._name).ts_field

    @property
    def key_field(self) -> str:
        return self._vigil.detector(self._name).key_field

    def ingest(self, raws: list[Any], origin: str | None = None, watermark: tuple[str, str] | None = None,
               start_index: int = 0) -> IngestResult:
        return self._vigil.ingest(self._name, raws, self._source, origin, watermark, start_index)

    def reject_whole(self, reason: str, message: str, origin: str | None = None,
                     raw: str | None = None) -> Rejection:
        return self._vigil.reject_whole(self._name, self._source, reason, message, origin, raw)

    def watermark(self, name: str) -> str | None:
        return self._vigil.repo.watermark(self._name, name)

    def stopping(self) -> bool:
        return self._vigil.stopping.is_set()
