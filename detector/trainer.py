"""The train job: fit a model on the detector's recent normal records and make it active."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from detector.config import DetectorConfig
from detector.frames import records_frame
from detector.service import Vigil
from detector.store.repository import ModelVersion
from training.errors import TrainingError
from training.fit import ModelSettings, ThresholdSettings, fit_model
from training.loop import EpochStats, TrainSettings

__all__ = ["Trainer", "TrainingAborted", "TrainingOutcome"]

logger = logging.getLogger(__name__)


class TrainingAborted(Exception):
    """Raised from the epoch hook when the daemon is stopping."""


@dataclass(frozen=True, slots=True)
class TrainingOutcome:
    result: str                      # success, failed, skipped
    message: str
    model: ModelVersion | None = None


def _settings(det: DetectorConfig) -> tuple[ModelSettings, TrainSettings, ThresholdSettings]:
    m = det.model
    model = ModelSettings(hidden=tuple(m.hidden), latent=m.latent, activation=m.activation, dropout=m.dropout)
    train = TrainSettings(
        epochs=m.epochs, batch_size=m.batch_size, learning_rate=m.learning_rate, weight_decay=m.weight_decay,
        patience=m.patience, validation_fraction=m.validation_fraction, seed=m.seed, loss=m.loss,
        device=m.device, max_seconds=m.max_train_time)
    threshold = ThresholdSettings(method=det.threshold.method, target_fpr=det.threshold.target_fpr)
    return model, train, threshold


class Trainer:
    """Runs training for one detector at a time; a failed run never disturbs the active model."""

    def __init__(self, vigil: Vigil) -> None:
        self._vigil = vigil
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def is_running(self, name: str) -> bool:
        with self._lock:
            return name in self._running

    def window_since(self, name: str) -> datetime | None:
        """Start of the training window: `window` before the newest record (None when empty)."""
        latest = self._vigil.repo.latest_ts(name)
        if latest is None:
            return None
        return latest - timedelta(seconds=self._vigil.detector(name).training.window)

    def ready_for_first_model(self, name: str) -> bool:
        """True when there is no model yet, none is training, and the window holds min_records."""
        if self.is_running(name) or self._vigil.repo.active_model_id(name) is not None:
            return False
        since = self.window_since(name)
        min_records = self._vigil.detector(name).training.min_records
        return since is not None and self._vigil.repo.count_window(name, since) >= min_records

    def train(self, name: str, trigger: str = "schedule",
              on_epoch: Callable[[EpochStats], None] | None = None) -> TrainingOutcome:
        with self._lock:
            if name in self._running:
                return TrainingOutcome("skipped", "a training run of this detector is already in progress")
            self._running.add(name)
        try:
            return self._train(name, trigger, on_epoch)
        finally:
            with self._lock:
                self._running.discard(name)

    def _train(self, name: str, trigger: str,
               on_epoch: Callable[[EpochStats], None] | None) -> TrainingOutcome:
        vigil, det = self._vigil, self._vigil.detector(name)
        metrics = vigil.metrics
        run_id = vigil.repo.start_training_run(name, trigger)
        started = time.perf_counter()
        since = self.window_since(name) or datetime.now(UTC)
        records = vigil.repo.training_window(name, since, det.training.max_records)
        if len(records) < det.training.min_records:
            message = (f"window holds {len(records)} records, training needs min_records="
                       f"{det.training.min_records}")
            vigil.repo.finish_training_run(run_id, "skipped", message, n_records=len(records))
            metrics.training_runs.labels(name, "skipped").inc()
            logger.info("training skipped", extra={"detector": name, "reason": message})
            return TrainingOutcome("skipped", message)

        def hook(stats: EpochStats) -> None:
            if vigil.stopping.is_set():
                raise TrainingAborted("the daemon is stopping")
            if on_epoch is not None:
                on_epoch(stats)

        model_settings, train_settings, threshold_settings = _settings(det)
        # Later windows exclude the records earlier models flagged; the first one was never screened.
        first = vigil.repo.active_model_id(name) is None
        trim = det.training.first_window_trim if first else 0.0
        try:
            fitted = fit_model(records_frame(records, det.feature_schema), det.feature_schema, model_settings,
                               train_settings, threshold_settings, on_epoch=hook, trim_fraction=trim)
            weights, meta = fitted.to_artifact()
        except (TrainingError, TrainingAborted, ValueError, KeyError, RuntimeError) as exc:
            message = f"{exc.__class__.__name__}: {exc}"
            vigil.repo.finish_training_run(run_id, "failed", message, n_records=len(records),
                                           duration_s=time.perf_counter() - started)
            metrics.training_runs.labels(name, "failed").inc()
            metrics.errors.labels("training").inc()
            logger.error("training failed", extra={"detector": name, "error": message},
                         exc_info=not isinstance(exc, TrainingError | TrainingAborted))
            return TrainingOutcome("failed", message)

        meta["window"] = {"start": records[0].ts.isoformat(), "end": records[-1].ts.isoformat(),
                          "records": len(records), "trigger": trigger}
        version = vigil.repo.save_model(name, weights, meta, fitted.threshold.value, len(records),
                                        records[0].ts, records[-1].ts)
        duration = time.perf_counter() - started
        report = fitted.report
        vigil.repo.finish_training_run(
            run_id, "success", f"model version {version.version} active", n_records=len(records),
            duration_s=duration, train_loss=report.get("train_loss"), val_loss=report.get("val_loss"),
            model_version_id=version.id)
        metrics.training_runs.labels(name, "success").inc()
        metrics.training_duration.labels(name).observe(duration)
        metrics.training_loss.labels(name, "train").set(float(report.get("train_loss") or 0.0))
        metrics.training_loss.labels(name, "validation").set(float(report.get("val_loss") or 0.0))
        metrics.training_records.labels(name).set(len(records))
        metrics.training_last_success.labels(name).set(time.time())
        metrics.set_active_model(name, version.version, fitted.threshold.value,
                                 fitted.threshold.expected_outlier_rate, version.created_at.timestamp())
        logger.info("training finished", extra={
            "detector": name, "version": version.version, "records": len(records),
            "duration_s": round(duration, 2), "threshold": fitted.threshold.value,
            "epochs": report.get("epochs_run")})
        return TrainingOutcome("success", f"model version {version.version} active", version)
