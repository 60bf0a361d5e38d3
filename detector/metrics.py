"""Every Prometheus series the daemon exports, declared against one injected registry."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["SCORE_RATIO_BUCKETS", "SUPPRESSION_REASONS", "TRAINING_BLOCKED_REASONS", "BatchHistogram", "Metrics",
           "StoreCollector", "StoreSnapshot"]

logger = logging.getLogger(__name__)

SCORE_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0, 5.0, 10.0, 100.0)
UNKNOWN_DETECTOR = "_unknown"
TRAINING_RESULTS = ("success", "failed", "skipped", "refused")
OOD_KINDS = ("unseen_category", "rare_category", "out_of_range", "new_key")
COMPONENTS = ("scoring", "training", "source", "store")
SUPPRESSION_REASONS = ("confirmation", "deviation_floor")
# why a detector cannot train: its training window holds no records, or fewer than training.min_records
TRAINING_BLOCKED_REASONS = ("empty_window", "too_few_records")


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What the store says at scrape time; times are Unix seconds."""

    records: Mapping[tuple[str, str], int] = field(default_factory=dict)
    oldest_pending: Mapping[str, float] = field(default_factory=dict)
    model_trained: Mapping[str, float] = field(default_factory=dict)
    unreviewed: Mapping[str, int] = field(default_factory=dict)
    confirmed: Mapping[str, int] = field(default_factory=dict)
    dismissed: Mapping[str, int] = field(default_factory=dict)


class Metrics:
    """The daemon's metrics; names and labels are the contract with dashboards and alert rules.

    Label values are bounded: detector names come from config (unknown ones collapse to
    `_unknown`), reasons and results from fixed sets.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records_ingested = Counter(
            "vigil_records_ingested_total", "Records accepted into the store, by detector and source.",
            ["detector", "source"], registry=registry)
        self.records_rejected = Counter(
            "vigil_records_rejected_total", "Records (or whole bodies/files) refused, by detector and reason.",
            ["detector", "reason"], registry=registry)
        self.records_scored = Counter(
            "vigil_records_scored_total", "Records scored by a model.", ["detector"], registry=registry)
        self.outliers = Counter(
            "vigil_outliers_total", "Records whose score passed the threshold.", ["detector"],
            registry=registry)
        self.alerts_suppressed = Counter(
            "vigil_alerts_suppressed_total",
            "Records over the threshold that alerting kept from being flagged, by reason "
            "(confirmation, deviation_floor).", ["detector", "reason"], registry=registry)
        self.score_ratio = BatchHistogram(
            "vigil_score_threshold_ratio", "Score of each scored record divided by the threshold in force.",
            ["detector"], SCORE_RATIO_BUCKETS, registry)
        self.threshold = Gauge(
            "vigil_threshold", "Reconstruction-error threshold of the active model.", ["detector"],
            registry=registry)
        self.expected_outlier_ratio = Gauge(
            "vigil_expected_outlier_ratio", "Share of normal records the active threshold is expected to flag.",
            ["detector"], registry=registry)
        self.model_info = Gauge(
            "vigil_model_info", "The active model version of each detector (value 1).",
            ["detector", "version"], registry=registry)
        self.model_trained = Gauge(
            "vigil_model_trained_timestamp_seconds", "Unix time the active model finished training.",
            ["detector"], registry=registry)
        self.training_runs = Counter(
            "vigil_training_runs_total", "Training runs by result (success, failed, skipped, refused).",
            ["detector", "result"], registry=registry)
        self.training_duration = Histogram(
            "vigil_training_duration_seconds", "Wall time of training runs that trained a model.",
            ["detector"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=registry)
        self.training_loss = Gauge(
            "vigil_training_loss", "Final loss of the last successful training run, by split.",
            ["detector", "split"], registry=registry)
        self.training_records = Gauge(
            "vigil_training_window_records", "Records in the window of the last successful training run.",
            ["detector"], registry=registry)
        self.training_blocked = Gauge(
            "vigil_training_blocked",
            "1 while the last look at a detector's training window found that it cannot train, by reason "
            "(empty_window, too_few_records: fewer than training.min_records); 0 otherwise.",
            ["detector", "reason"], registry=registry)
        self.model_load_failures = Counter(
            "vigil_model_load_failures_total",
            "Model versions that could not be loaded (metadata or weights unreadable, checksum mismatch) and were "
            "set aside as rejected.", ["detector"], registry=registry)
        self.training_last_success = Gauge(
            "vigil_training_last_success_timestamp_seconds", "Unix time of the last successful training run.",
            ["detector"], registry=registry)
        self.scoring_duration = Histogram(
            "vigil_scoring_batch_duration_seconds", "Wall time to score and store one batch.",
            ["detector"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry)
        self.out_of_distribution = Counter(
            "vigil_records_out_of_distribution_total",
            "Scored records with a value unlike any in training, by kind (unseen_category, rare_category, "
            "out_of_range, new_key).",
            ["detector", "kind"], registry=registry)
        self.diversity_failing = Gauge(
            "vigil_training_data_check_failing",
            "1 when a diversity check of the last training window did not pass (warn or fail), else 0.",
            ["detector", "check"], registry=registry)
        self.review_verdicts = Counter(
            "vigil_review_verdicts_total", "Review verdicts given to outliers (confirmed, dismissed).",
            ["detector", "verdict"], registry=registry)
        self.errors = Counter(
            "vigil_errors_total", "Failures of a job or component, by component.",
            ["component"], registry=registry)

    def initialise(self, detectors: Mapping[str, str]) -> None:
        """Create every known label combination at 0, so that rate() sees the first increment.

        `detectors` maps each configured detector to its source type.
        """
        for name, source in detectors.items():
            self.records_ingested.labels(name, source)
            self.records_scored.labels(name)
            self.outliers.labels(name)
            for reason in SUPPRESSION_REASONS:
                self.alerts_suppressed.labels(name, reason)
            for result in TRAINING_RESULTS:
                self.training_runs.labels(name, result)
            for reason in TRAINING_BLOCKED_REASONS:
                self.training_blocked.labels(name, reason)
            self.model_load_failures.labels(name)
            for kind in OOD_KINDS:
                self.out_of_distribution.labels(name, kind)
            for verdict in ("confirmed", "dismissed"):
                self.review_verdicts.labels(name, verdict)
        for component in COMPONENTS:
            self.errors.labels(component)

    def observe_score_ratios(self, detector: str, ratios: npt.NDArray[np.float64]) -> None:
        """Add a batch's score/threshold ratios to vigil_score_threshold_ratio, as one `observe` per value
        would (NaN counts in the sum only), with one increment per bucket instead of one call per record."""
        self.score_ratio.observe_many((detector,), ratios)

    def set_active_model(self, detector: str, version: int, threshold: float,
                         expected_rate: float, trained_at_s: float) -> None:
        """Publish the active model of a detector, replacing the previous version's series."""
        for sample in next(iter(self.model_info.collect())).samples:
            if sample.labels.get("detector") == detector and sample.labels.get("version") != str(version):
                self.model_info.remove(detector, sample.labels["version"])
        self.model_info.labels(detector, str(version)).set(1)
        self.threshold.labels(detector).set(threshold)
        self.expected_outlier_ratio.labels(detector).set(expected_rate)
        self.model_trained.labels(detector).set(trained_at_s)


class HistogramChild:
    """One label set of a `BatchHistogram`: `observe` one value (as prometheus_client's children do)."""

    def __init__(self, parent: BatchHistogram, labelvalues: tuple[str, ...]) -> None:
        self._parent = parent
        self._labelvalues = labelvalues

    def observe(self, value: float) -> None:
        self._parent.observe_many(self._labelvalues, np.asarray([value], dtype=np.float64))


class BatchHistogram(Collector):
    """A labelled histogram whose values arrive in batches: one bucket count per batch and bucket instead of
    one `observe` call per value, exported through prometheus_client's public collector API.

    A value counts in the first bucket whose upper bound is at least it (cumulatively in the ones above);
    NaN counts in the sum only, as prometheus_client's own Histogram counts it.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        if any(not 0 < b < 1e6 for b in buckets):
            raise ValueError(f"{name}: bucket bounds must lie in (0, 1e6)")
        self._bounds = np.asarray([*buckets, math.inf], dtype=np.float64)
        # bucket labels as prometheus_client writes them (Go's float format, for bounds below 1e6)
        self._les = ["+Inf" if math.isinf(b) else repr(b) for b in self._bounds.tolist()]
        self._counts: dict[tuple[str, ...], npt.NDArray[np.int64]] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *labelvalues: str) -> HistogramChild:
        """The series of one label set, created at zero when new."""
        if len(labelvalues) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {list(labelvalues)}")
        key = tuple(str(v) for v in labelvalues)
        with self._lock:
            if key not in self._counts:
                self._counts[key] = np.zeros(len(self._bounds), dtype=np.int64)
                self._sums[key] = 0.0
        return HistogramChild(self, key)

    def observe_many(self, labelvalues: tuple[str, ...], values: npt.NDArray[np.float64]) -> None:
        """Add every value of `values` to the series of `labelvalues`."""
        self.labels(*labelvalues)
        if not len(values):
            return
        slots = np.searchsorted(self._bounds, values, side="left")   # NaN sorts past the last bound
        counts = np.bincount(slots, minlength=len(self._bounds) + 1)[: len(self._bounds)]
        total = float(values.sum())
        with self._lock:
            self._counts[labelvalues] += counts
            self._sums[labelvalues] += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            series = [(key, np.cumsum(counts).tolist(), self._sums[key]) for key, counts in self._counts.items()]
        for key, cumulative, total in series:
            family.add_metric(list(key), list(zip(self._les, cumulative, strict=True)), total)
        return [family]


class StoreCollector(Collector):
    """Values that live in the database, read when Prometheus scrapes (one snapshot per scrape)."""

    def __init__(self, snapshot: Callable[[], StoreSnapshot], detectors: Callable[[], Iterable[str]]) -> None:
        self._snapshot = snapshot
        self._detectors = detectors

    def collect(self) -> Iterable[Metric]:
        try:
            snap = self._snapshot()
        except Exception:  # a scrape must not fail because the store is briefly away
            logger.warning("store unavailable during scrape", exc_info=True)
            return []
        now = time.time()
        records = GaugeMetricFamily(
            "vigil_records", "Records in the store by detector and state (pending, scored).",
            labels=["detector", "state"])
        lag = GaugeMetricFamily(
            "vigil_scoring_lag_seconds", "Age of the oldest record waiting to be scored (0 when none waits).",
            labels=["detector"])
        age = GaugeMetricFamily(
            "vigil_model_age_seconds", "Seconds since the active model was trained (absent without a model).",
            labels=["detector"])
        unreviewed = GaugeMetricFamily(
            "vigil_outliers_unreviewed", "Outliers no one has reviewed yet (the review backlog).",
            labels=["detector"])
        precision = GaugeMetricFamily(
            "vigil_review_precision",
            "Share of reviewed outliers people confirmed as real (absent before the first verdict).",
            labels=["detector"])
        for name in self._detectors():
            reviewed = snap.confirmed.get(name, 0) + snap.dismissed.get(name, 0)
            if reviewed:
                precision.add_metric([name], snap.confirmed.get(name, 0) / reviewed)
            for state in ("pending", "scored"):
                records.add_metric([name, state], float(snap.records.get((name, state), 0)))
            oldest = snap.oldest_pending.get(name)
            lag.add_metric([name], max(0.0, now - oldest) if oldest is not None else 0.0)
            if name in snap.model_trained:
                age.add_metric([name], max(0.0, now - snap.model_trained[name]))
            unreviewed.add_metric([name], float(snap.unreviewed.get(name, 0)))
        return [records, lag, age, unreviewed, precision]
