"""The train job: fit a model on the detector's recent normal records and make it active."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from detector.config import DetectorConfig
from detector.errors import StorageError
from detector.frames import needs_context, records_frame
from detector.metrics import TRAINING_BLOCKED_REASONS
from detector.scheduler import slot_served
from detector.service import Vigil, window_anchor
from detector.store.models import INTERRUPTED
from detector.store.repository import Repository
from detector.store.types import ModelVersion, PendingRecord
from training.diversity import CHECKS, DiversityLimits, DiversityReport, check_window
from training.errors import TrainingError
from training.fit import fit_model, recalibrate
from training.fitted import FittedModel
from training.loop import EpochStats, TrainSettings
from training.model import AutoencoderSpec, count_parameters
from training.preprocess import Preprocessor
from training.settings import ModelSettings, ThresholdSettings, settings_from
from training.thresholds import tune_with_reviews

__all__ = ["Trainer", "TrainingAborted", "TrainingOutcome", "settings_for", "trim_for"]

logger = logging.getLogger(__name__)

FIRST_RETRY_S = 30.0   # a failed first training is retried after 30 s, then 60 s, 120 s...


class TrainingAborted(Exception):
    """Raised from the epoch hook when the daemon is stopping."""


@dataclass(frozen=True, slots=True)
class TrainingOutcome:
    result: str                      # success, failed, skipped, refused
    message: str
    model: ModelVersion | None = None
    diversity: DiversityReport | None = None


def settings_for(det: DetectorConfig, first: bool = False) -> tuple[ModelSettings, TrainSettings, ThresholdSettings]:
    """The training library's model, training and threshold settings for a detector's config: each field
    read from the config key of the same name, or of the name given here. `first`: for a window no model
    has screened (the detector's first): the wide scale's share is at least `training.first_window_wide_share`,
    as incidents the window holds must not vouch for each other."""
    m = det.model.model_dump()
    model = settings_from(ModelSettings, m, weights="score_weights")
    if first:
        model = replace(model, wide_share=max(model.wide_share, det.training.first_window_wide_share))
    train = settings_from(TrainSettings, m, max_seconds="max_train_time")
    threshold = settings_from(ThresholdSettings, det.threshold.model_dump())
    return model, train, threshold


def trim_for(det: DetectorConfig, first: bool) -> float:
    """The share of a window its screening fit may trim: `training.first_window_trim` for a window no model
    has screened (the detector's first; `settings_for(det, first=True)` widens its scale too), else 0."""
    return det.training.first_window_trim if first else 0.0


def diversity_report(repo: Repository, name: str, det: DetectorConfig, records: list[PendingRecord],
                     frame: pd.DataFrame, since: datetime) -> DiversityReport:
    """Check a detector's training window against its limits and its longer history."""
    schema = det.feature_schema
    latest, earliest = window_anchor(repo.latest_ts(name), det, datetime.now(UTC)), repo.earliest_ts(name)
    history = None
    if latest is not None:
        reference_since = latest - timedelta(seconds=det.diversity.reference)
        history = records_frame(repo.training_window(name, reference_since, det.diversity.reference_max_records,
                                                     det.review.states_into_training), schema)
    available = (latest - earliest).total_seconds() if latest and earliest else None
    span = det.training.window if available is None else min(det.training.window, available)
    n_columns = Preprocessor.fit(frame, schema).n_columns if len(frame) else 0
    n_parameters = count_parameters(AutoencoderSpec(n_inputs=max(n_columns, 1), hidden=tuple(det.model.hidden),
                                                    latent=det.model.latent))
    return check_window(
        frame, schema, DiversityLimits(**det.diversity.limits()), n_parameters=n_parameters,
        timestamps=pd.Series([r.ts for r in records], dtype="datetime64[ns, UTC]"),
        keys=pd.Series([r.key for r in records], dtype=object), expected_span_s=span, history=history,
        excluded=repo.count_flagged(name, since, det.review.states_into_training))


class Trainer:
    """Runs training for one detector at a time; a failed run never disturbs the active model."""

    def __init__(self, vigil: Vigil) -> None:
        self._vigil = vigil
        self._running: set[str] = set()
        # per detector, why its training window is too short (a TRAINING_BLOCKED_REASONS entry) and which
        # look found it ("first": the first-model check of the score job; "run": a training run)
        self._short: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def is_running(self, name: str) -> bool:
        with self._lock:
            return name in self._running

    def window_since(self, name: str) -> datetime | None:
        """Start of the training window (`Vigil.window_since`); None when the detector has no records."""
        return self._vigil.window_since(name)

    def ready_for_first_model(self, name: str) -> bool:
        """True when there is no model yet, none is training, and the window holds min_records.

        A window short of min_records is reported once per change of reason (`_window_short`): a warning,
        a `skipped` training run with the reason, and vigil_training_blocked."""
        if self.is_running(name):
            return False
        if self._vigil.repo.active_model_id(name) is not None:
            self._window_ok(name, "first")        # another instance trained the first model meanwhile
            return False
        det = self._vigil.detector(name)
        since = self.window_since(name)
        count = 0 if since is None else self._vigil.repo.count_window(name, since, det.review.states_into_training)
        if count < det.training.min_records:
            self._window_short(name, since, count, "first")
            return False
        self._window_ok(name, "first")
        return self._backoff_over(name)

    def _window_short(self, name: str, since: datetime | None, count: int, look: str) -> str:
        """Report that `name`'s training window (from `since`; None: no records) holds only `count` records,
        fewer than training.min_records; returns the reason as a message. Logged, published and (for the
        first-model check, `look` "first") recorded as a skipped training run only when the reason changes,
        not at every look."""
        det = self._vigil.detector(name)
        min_records = det.training.min_records
        if since is None:
            reason, message = "empty_window", f"no records yet: training needs min_records={min_records}"
        else:
            reason = "empty_window" if count == 0 else "too_few_records"
            message = (f"window holds {count} records (since {since.isoformat(timespec='seconds')}), training "
                       f"needs min_records={min_records}")
        with self._lock:
            previous = self._short.get(name)
        if previous is not None and previous[0] == reason:
            with self._lock:
                self._short[name] = (reason, look)
            return message
        if look == "first":       # recorded first: a store that refuses it leaves the change for the next look
            repo = self._vigil.repo
            repo.finish_training_run(repo.start_training_run(name, "first"), "skipped", message, n_records=count)
            self._vigil.metrics.training_runs.labels(name, "skipped").inc()
        with self._lock:
            self._short[name] = (reason, look)
        self._publish_blocked(name, reason)
        logger.warning("training window too short: no model can be trained", extra={
            "detector": name, "reason": reason, "records": count, "min_records": min_records,
            "window_start": since.isoformat() if since else None})
        return message

    def _window_ok(self, name: str, look: str) -> None:
        """The window of `name` holds enough records now (or a model was trained): clear what
        `_window_short` reported, when `look` may clear it (the first-model check clears only its own)."""
        with self._lock:
            previous = self._short.get(name)
            if previous is None or (look == "first" and previous[1] != "first"):
                return
            del self._short[name]
        self._publish_blocked(name, None)
        logger.info("training window holds enough records again", extra={"detector": name})

    def _publish_blocked(self, name: str, reason: str | None) -> None:
        for each in TRAINING_BLOCKED_REASONS:
            self._vigil.metrics.training_blocked.labels(name, each).set(1.0 if each == reason else 0.0)

    def _backoff_over(self, name: str) -> bool:
        """After failed or refused attempts, wait 30 s, 60 s, 120 s... (at most the training interval)."""
        runs = self._vigil.repo.list_training_runs(name, limit=10)
        failures = 0
        for run in runs:
            if run.result not in ("failed", "refused") or run.message == INTERRUPTED:
                break           # a run cut short by a stop is no reason to wait
            failures += 1
        if failures == 0:
            return True
        training = self._vigil.detector(name).training
        wait = min(FIRST_RETRY_S * 2 ** (failures - 1), training.interval or 3600.0)
        return datetime.now(UTC) - runs[0].started_at >= timedelta(seconds=wait)

    def _check_window(self, name: str, det: DetectorConfig, records: list[PendingRecord], frame: pd.DataFrame,
                      since: datetime) -> DiversityReport:
        """The diversity report of a training window, published as logs and metrics."""
        repo, metrics = self._vigil.repo, self._vigil.metrics
        try:
            report = diversity_report(repo, name, det, records, frame, since)
        except StorageError:
            raise
        except Exception:   # a bug in a check must not stop training; it is logged and counted
            logger.exception("diversity checks failed to run", extra={"detector": name})
            metrics.errors.labels("training").inc()
            return DiversityReport(())
        failing = {c.check for c in report.problems}
        for check_name in CHECKS:
            metrics.diversity_failing.labels(name, check_name).set(1.0 if check_name in failing else 0.0)
        for problem in report.problems:
            logger.warning("training data check did not pass", extra={
                "detector": name, "check": problem.check, "status": problem.status, "feature": problem.feature,
                "value": problem.value, "limit": problem.limit, "advice": problem.message})
        return report

    def _already_served(self, name: str, trigger: str) -> str | None:
        """Why another instance's run makes this one unnecessary (first model exists, slot served)."""
        repo = self._vigil.repo
        if trigger == "first" and repo.active_model_id(name) is not None:
            return "the first model was trained by another instance"
        if trigger == "schedule":
            last = repo.last_counted_run(name)
            now = datetime.now(UTC)
            if last is not None and slot_served(self._vigil.detector(name).training, last.started_at, now):
                return "this schedule slot was already trained (by this or another instance)"
        return None

    def _confirmed(self, name: str, det: DetectorConfig,
                   reviewed: list[tuple[str, dict[str, Any], str | None]]) -> pd.DataFrame | None:
        """The records of outliers people confirmed, oldest first, for a point-wise hybrid model to remember
        (`reviewed`: the newest verdicts, newest first, as `reviewed_fields` gives them)."""
        m = det.model
        if m.review_weight == 0 or m.score != "hybrid" or m.window > 1 or m.time_features:
            return None
        fields = [(f, key) for verdict, f, key in reversed(reviewed) if verdict == "confirmed"]
        if not fields:
            return None
        now = datetime.now(UTC)
        try:       # with their keys: a per-key model judges them against their key's normal
            return records_frame([PendingRecord(i, now, key, f) for i, (f, key) in enumerate(fields)],
                                 det.feature_schema, context=True)
        except (KeyError, ValueError) as exc:     # verdicts on records of an older schema
            logger.warning("confirmed outliers not used", extra={"detector": name, "error": str(exc)})
            return None

    def _calibrate_with_flagged(self, name: str, det: DetectorConfig, fitted: FittedModel, n_records: int,
                                since: datetime, threshold: ThresholdSettings) -> None:
        """Let the normal tail among the window's unreviewed flagged records rejoin the threshold's calibration.

        A later window leaves out what earlier models flagged: incidents, but also the top of the normal
        tail that crossed the last threshold. Calibrated on the rest, each retraining set its threshold
        below the window's true 1 - target_fpr quantile, and the flagged share crept past target_fpr from
        one model to the next. The new model scores those records (it never trained on them), and those
        within its clear-outlier cut, plus the lowest of the others up to half of target_fpr, rejoin the
        calibration, as the first window's trimmed rows do (`training.fit.recalibrate`); the records stay
        out of training. Point-wise models (a sequence model would need each record's predecessors)."""
        if det.model.window > 1 or fitted.val_scores is None or "unreviewed" in det.review.states_into_training:
            return
        repo = self._vigil.repo
        flagged = repo.flagged_unreviewed(name, since, det.training.max_records)
        if not flagged:
            return
        trainable = repo.count_window(name, since, det.review.states_into_training)
        if trainable > n_records:          # the window was sampled: its flagged records at the same rate
            keep = round(len(flagged) * n_records / trainable)
            flagged = [flagged[int(i)] for i in np.linspace(0, len(flagged) - 1, keep).round()] if keep else []
        if not flagged:
            return
        try:
            frame = records_frame(flagged, det.feature_schema, context=needs_context(det))
        except (KeyError, ValueError) as exc:      # records of an older schema
            logger.warning("flagged records not used for calibration", extra={"detector": name, "error": str(exc)})
            return
        recalibrate(fitted, frame, threshold, n_records + len(flagged))

    def _tune_with_reviews(self, name: str, det: DetectorConfig, fitted: FittedModel,
                           reviewed: list[tuple[str, dict[str, Any], str | None]]) -> None:
        """With enough verdicts, move the threshold to the best F1 on reviewed outliers within the FP budget."""
        review = det.review
        if not review.tune_threshold or fitted.val_scores is None:
            return
        if fitted.scoring.window > 1 or fitted.scoring.time_features:
            logger.info("threshold not tuned with reviews: the model reads times and keys the verdicts lack",
                        extra={"detector": name})
            return
        confirmed = [(fields, key) for verdict, fields, key in reviewed if verdict == "confirmed"]
        dismissed = [(fields, key) for verdict, fields, key in reviewed if verdict == "dismissed"]
        if len(confirmed) + len(dismissed) < review.min_verdicts or not confirmed or not dismissed:
            return
        now = datetime.now(UTC)
        reviewed_records = [PendingRecord(i, now, key, f) for i, (f, key) in enumerate(confirmed + dismissed)]
        # scored without the confirmed outliers the model remembers: each would be its own nearest one
        frame = records_frame(reviewed_records, det.feature_schema, context=True)
        scores = fitted.score(frame, reviews=False).scores
        tuned, summary = tune_with_reviews(fitted.threshold, fitted.val_scores, scores[: len(confirmed)],
                                           scores[len(confirmed):], det.threshold.target_fpr * review.max_fpr_factor)
        fitted.threshold = tuned
        fitted.report["review_tuning"] = summary
        logger.info("threshold tuned with reviews", extra={"detector": name, **summary})

    def train(self, name: str, trigger: str = "manual",
              on_epoch: Callable[[EpochStats], None] | None = None) -> TrainingOutcome:
        with self._lock:
            if name in self._running:
                return TrainingOutcome("skipped", "a training run of this detector is already in progress")
            self._running.add(name)
        try:
            with self._vigil.repo.trainer_lock(name) as mine:
                if not mine:
                    return TrainingOutcome("skipped", "another instance is training this detector")
                served = self._already_served(name, trigger)
                if served:
                    return TrainingOutcome("skipped", served)
                return self._train(name, trigger, on_epoch)
        finally:
            with self._lock:
                self._running.discard(name)

    def _window_records(self, name: str, det: DetectorConfig, since: datetime) -> tuple[list[PendingRecord], int]:
        """The training window's records, and how many flagged ones rejoined it.

        Flagged records stay out of training (unless a review lets them in). When they are more than
        `training.readmit_flagged_share` of the window, the flags are no longer incidents but a new normal
        the model has not learned (a level that shifted and stayed, the part of a cycle the first window
        lacked): left out, it would be flagged for ever. The unreviewed ones then rejoin; confirmed stay out."""
        repo, reviewed_in = self._vigil.repo, det.review.states_into_training
        # a window larger than max_records: an even sample of all of it (a sequence model needs runs of
        # consecutive records: the newest ones)
        spread = det.model.window == 1
        records = repo.training_window(name, since, det.training.max_records, reviewed_in, spread)
        share = det.training.readmit_flagged_share
        if share >= 1.0 or "unreviewed" in reviewed_in:
            return records, 0
        flagged = repo.count_flagged(name, since, reviewed_in)
        if flagged == 0 or flagged <= share * (flagged + len(records)):
            return records, 0
        records = repo.training_window(name, since, det.training.max_records, (*reviewed_in, "unreviewed"), spread)
        logger.warning("flagged records rejoin the training window: they are more than "
                       "training.readmit_flagged_share of it, a new normal rather than incidents",
                       extra={"detector": name, "flagged": flagged, "share": round(flagged / len(records), 4),
                              "limit": share})
        return records, flagged

    def _train(self, name: str, trigger: str,
               on_epoch: Callable[[EpochStats], None] | None) -> TrainingOutcome:
        vigil, det = self._vigil, self._vigil.detector(name)
        metrics = vigil.metrics
        run_id = vigil.repo.start_training_run(name, trigger)
        started = time.perf_counter()
        since = self.window_since(name) or datetime.now(UTC)
        records, readmitted = self._window_records(name, det, since)
        if len(records) < det.training.min_records:
            message = (f"window holds {len(records)} records, training needs min_records="
                       f"{det.training.min_records}")
            self._window_short(name, since, len(records), "run")
            vigil.repo.finish_training_run(run_id, "skipped", message, n_records=len(records))
            metrics.training_runs.labels(name, "skipped").inc()
            logger.info("training skipped", extra={"detector": name, "reason": message})
            return TrainingOutcome("skipped", message)

        self._window_ok(name, "run")
        frame = records_frame(records, det.feature_schema)
        report = self._check_window(name, det, records, frame, since)
        if det.diversity.policy == "block" and report.status == "fail":
            failing = [c for c in report.problems if c.status == "fail"]
            message = "refused: the training window failed diversity checks: " + "; ".join(c.message for c in failing)
            vigil.repo.finish_training_run(run_id, "refused", message, n_records=len(records),
                                           duration_s=time.perf_counter() - started, diversity=report.to_dict())
            metrics.training_runs.labels(name, "refused").inc()
            logger.warning("training refused: the window failed diversity checks",
                           extra={"detector": name, "checks": sorted({c.check for c in failing})})
            return TrainingOutcome("refused", message, diversity=report)

        def hook(stats: EpochStats) -> None:
            if vigil.stopping.is_set():
                raise TrainingAborted("the daemon is stopping")
            if on_epoch is not None:
                on_epoch(stats)

        # Later windows exclude the records earlier models flagged; the first one was never screened: it is
        # trimmed, and judged at the wide scale as well (training.first_window_trim, first_window_wide_share).
        first = vigil.repo.active_model_id(name) is None
        model_settings, train_settings, threshold_settings = settings_for(det, first=first)
        trim = trim_for(det, first)
        reviewed = vigil.repo.reviews.reviewed_fields(name)     # read once: the memory and the threshold use it
        try:
            if needs_context(det):
                frame = records_frame(records, det.feature_schema, context=True)    # times and keys are read
            fitted = fit_model(frame, det.feature_schema, model_settings, train_settings, threshold_settings,
                               on_epoch=hook, trim_fraction=trim, confirmed=self._confirmed(name, det, reviewed))
        except (TrainingError, TrainingAborted, ValueError, KeyError, RuntimeError) as exc:
            message = f"{exc.__class__.__name__}: {exc}"
            vigil.repo.finish_training_run(run_id, "failed", message, n_records=len(records),
                                           duration_s=time.perf_counter() - started, diversity=report.to_dict())
            metrics.training_runs.labels(name, "failed").inc()
            metrics.errors.labels("training").inc()
            logger.error("training failed", extra={"detector": name, "error": message},
                         exc_info=not isinstance(exc, TrainingError | TrainingAborted))
            return TrainingOutcome("failed", message)

        if not first and not readmitted:
            self._calibrate_with_flagged(name, det, fitted, len(records), since, threshold_settings)
        self._tune_with_reviews(name, det, fitted, reviewed)
        weights, meta = fitted.to_artifact()
        meta["window"] = {"start": records[0].ts.isoformat(), "end": records[-1].ts.isoformat(),
                          "records": len(records), "trigger": trigger}
        meta["diversity"] = report.to_dict()
        meta["readmitted_flagged"] = readmitted      # flagged records that rejoined the window (a new normal)
        version = vigil.repo.save_model(name, weights, meta, fitted.threshold.value, len(records),
                                        records[0].ts, records[-1].ts, run_id=run_id)
        duration = time.perf_counter() - started
        fit_report = fitted.report
        vigil.repo.finish_training_run(
            run_id, "success", f"model version {version.version} active", n_records=len(records),
            duration_s=duration, train_loss=fit_report.get("train_loss"), val_loss=fit_report.get("val_loss"),
            model_version_id=version.id, diversity=report.to_dict())
        metrics.training_runs.labels(name, "success").inc()
        metrics.training_duration.labels(name).observe(duration)
        metrics.training_loss.labels(name, "train").set(float(fit_report.get("train_loss") or 0.0))
        metrics.training_loss.labels(name, "validation").set(float(fit_report.get("val_loss") or 0.0))
        metrics.training_records.labels(name).set(len(records))
        metrics.training_last_success.labels(name).set(time.time())
        metrics.set_active_model(name, version.version, fitted.threshold.value,
                                 fitted.threshold.expected_outlier_rate, version.created_at.timestamp())
        logger.info("training finished", extra={
            "detector": name, "version": version.version, "records": len(records),
            "duration_s": round(duration, 2), "threshold": fitted.threshold.value,
            "epochs": fit_report.get("epochs_run"), "diversity": report.status})
        return TrainingOutcome("success", f"model version {version.version} active", version, report)
