"""The score job: claim pending records, score them with the active model, store results and outliers."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from detector.frames import records_frame, to_json_value
from detector.service import Vigil
from detector.store.repository import PendingRecord, ScoredRecord
from training.errors import TrainingError
from training.fit import FittedModel

__all__ = ["ActiveModel", "ModelCache", "Scorer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActiveModel:
    id: int
    version: int
    model: FittedModel


class ModelCache:
    """Keeps each detector's active model loaded; reloads when another version becomes active."""

    def __init__(self, vigil: Vigil) -> None:
        self._vigil = vigil
        self._models: dict[str, ActiveModel] = {}
        self._broken: set[int] = set()
        self._lock = threading.Lock()

    def get(self, name: str) -> ActiveModel | None:
        active_id = self._vigil.repo.active_model_id(name)
        with self._lock:
            cached = self._models.get(name)
            if active_id is None:
                self._models.pop(name, None)
                return None
            if cached is not None and cached.id == active_id:
                return cached
        if active_id in self._broken:
            return None
        row = self._vigil.repo.active_model(name)
        if row is None or row.weights is None:
            return None
        try:
            model = FittedModel.from_artifact(row.weights, row.meta)
        except TrainingError as exc:
            self._broken.add(row.id)
            self._vigil.metrics.errors.labels("scoring").inc()
            logger.error("active model cannot be loaded; records stay pending until another version is active",
                         extra={"detector": name, "version": row.version, "error": str(exc)})
            return None
        loaded = ActiveModel(row.id, row.version, model)
        with self._lock:
            self._models[name] = loaded
        self._vigil.metrics.set_active_model(
            name, row.version, model.threshold.value, model.threshold.expected_outlier_rate,
            row.created_at.timestamp())
        logger.info("model loaded", extra={"detector": name, "version": row.version})
        return loaded


class Scorer:
    """Scores every pending record of a detector, batch by batch, exactly once per record."""

    def __init__(self, vigil: Vigil, cache: ModelCache) -> None:
        self._vigil = vigil
        self._cache = cache
        self.incompatible: set[str] = set()   # detectors whose active model no longer fits their features

    def _score_batch(self, name: str, active: ActiveModel, pending: list[PendingRecord]) -> list[ScoredRecord]:
        det = self._vigil.detector(name)
        result = active.model.score(records_frame(pending, det.feature_schema))
        top_k = det.scoring.top_contributions
        windows = self._vigil.repo.reviews.windows(name, (min(p.ts for p in pending), max(p.ts for p in pending)))
        scored = []
        for i, record in enumerate(pending):
            score = float(result.scores[i])
            outlier = None
            in_maintenance = any(w.start <= record.ts < w.end for w in windows)
            if result.is_outlier[i] and not in_maintenance:
                expected = {
                    col: to_json_value(result.expected.iloc[i][col]) for col in result.expected.columns
                }
                outlier = {
                    "contributions": result.top_contributions(i, record.fields, top_k),
                    "expected": expected,
                }
            scored.append(ScoredRecord(record.id, score, outlier, result.out_of_distribution(i)))
        return scored

    def score(self, name: str, max_batches: int = 20) -> int:
        """Score pending records of `name` until none are left (or `max_batches`); returns how many."""
        active = self._cache.get(name)
        if active is None:
            return 0
        det = self._vigil.detector(name)
        if active.model.schema != det.feature_schema:
            if name not in self.incompatible:
                logger.warning("the active model does not fit the detector's features: records wait for a new one",
                               extra={"detector": name, "version": active.version})
            self.incompatible.add(name)
            return 0
        self.incompatible.discard(name)
        metrics = self._vigil.metrics
        total = 0
        for _ in range(max_batches):
            if self._vigil.stopping.is_set():
                break
            started = time.perf_counter()
            scored = self._vigil.repo.score_pending(
                name, det.scoring.batch_size, active.id, active.model.threshold.value,
                lambda pending: self._score_batch(name, active, pending))
            if not scored:
                break
            threshold = active.model.threshold.value
            flagged = sum(1 for s in scored if s.outlier is not None)
            for s in scored:
                if s.ood is not None:
                    for kind, features in s.ood.items():
                        if features:
                            metrics.out_of_distribution.labels(name, kind).inc()
            metrics.records_scored.labels(name).inc(len(scored))
            if flagged:
                metrics.outliers.labels(name).inc(flagged)
            histogram = metrics.score_ratio.labels(name)
            for s in scored:
                histogram.observe(s.score / threshold if threshold > 0 else float("inf"))
            metrics.scoring_duration.labels(name).observe(time.perf_counter() - started)
            total += len(scored)
            if len(scored) < det.scoring.batch_size:
                break
        if total:
            logger.info("scored", extra={"detector": name, "records": total, "model_version": active.version})
        return total
