"""A detector's sections: features, model, threshold, training, diversity, review, scoring, alerting."""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from detector.config.base import PositiveDuration, Section
from detector.config.sources import PrometheusSourceConfig, SourceConfig
from training.choices import (
    Activation,
    LossName,
    NoiseKind,
    PerKey,
    Scaling,
    ScoreKind,
    Search,
    SequenceArch,
    SparsityKind,
    ThresholdMethod,
    Variant,
)
from training.schema import Feature, FeatureKind, Schema
from training.settings import FIRST_WINDOW_WIDE_SHARE, WIDE_SHARE

__all__ = [
    "AlertingConfig",
    "DetectorConfig",
    "DiversityConfig",
    "FeatureConfig",
    "FloorConfig",
    "ModelConfig",
    "ReviewConfig",
    "ScoringConfig",
    "ThresholdConfig",
    "TrainingConfig",
]

class FeatureConfig(Section):
    kind: FeatureKind
    optional: bool = False


FeatureKindName = FeatureKind


class ModelConfig(Section):
    hidden: tuple[int, ...] = Field(default=(64, 32))
    latent: int = Field(default=8, gt=0)
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    variant: Variant = "dense"
    noise: NoiseKind = "gaussian"
    noise_level: float = Field(default=0.1, ge=0.0, lt=1.0)
    sparsity: SparsityKind = "l1"
    sparsity_weight: float = Field(default=1e-3, ge=0.0)
    sparsity_target: float = Field(default=0.05, gt=0.0, lt=1.0)
    contractive_weight: float = Field(default=1e-2, ge=0.0)
    beta: float = Field(default=1.0, ge=0.0)
    scaling: Scaling = "standard"
    score: ScoreKind = "hybrid"
    neighbors: int = Field(default=5, gt=0, le=100)
    memory_size: int = Field(default=50_000, ge=10, le=1_000_000)
    score_weights: tuple[float, float, float] = Field(default=(0.3, 1.0, 0.5))
    window: int = Field(default=1, ge=1, le=1024)
    arch: SequenceArch = "conv"
    time_features: bool = False
    review_weight: float = Field(default=4.0, ge=0.0, le=100.0)
    neighbor_search: Search = "approximate"
    per_key: PerKey = "auto"
    wide_share: float = Field(default=WIDE_SHARE, ge=0.0, lt=0.5)
    loss: LossName = "mse"
    epochs: int = Field(default=100, gt=0)
    batch_size: int = Field(default=256, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    patience: int = Field(default=10, gt=0)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    device: str = "auto"
    max_train_time: PositiveDuration | None = None

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(width <= 0 for width in value):
            raise ValueError("every hidden layer width must be > 0")
        return value

    @field_validator("score_weights")
    @classmethod
    def _weights(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(w < 0 for w in value) or sum(value) <= 0:
            raise ValueError("score_weights (reconstruction, distance, density) must be >= 0 and not all 0")
        return value

    @model_validator(mode="after")
    def _score_fits_variant(self) -> ModelConfig:
        if self.score == "elbo" and self.variant != "vae":
            raise ValueError("score 'elbo' needs variant 'vae'")
        if self.memory_size < 2 * self.neighbors:
            raise ValueError("memory_size must be at least 2 * neighbors")
        return self

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value


class ThresholdConfig(Section):
    method: ThresholdMethod = "quantile"
    target_fpr: float = Field(default=0.01, gt=0, lt=0.5)
    k: float = Field(default=3.0, gt=0)
    calibration_folds: int = Field(default=5, ge=1, le=20)
    fold_max_rows: int = Field(default=5000, ge=0)


class TrainingConfig(Section):
    interval: PositiveDuration | None = Field(default=3600.0)
    cron: str | None = None
    window: PositiveDuration = Field(default=2 * 86400.0)
    max_records: int = Field(default=50_000, gt=0)
    min_records: int = Field(default=500, gt=0)
    first_window_trim: float = Field(default=0.02, ge=0.0, lt=0.5)
    first_window_wide_share: float = Field(default=FIRST_WINDOW_WIDE_SHARE, ge=0.0, lt=0.5)
    readmit_flagged_share: float = Field(default=0.2, gt=0.0, le=1.0)

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError("cron must have 5 fields: minute hour day month day-of-week")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> TrainingConfig:
        if self.cron is not None and "interval" in self.model_fields_set:
            raise ValueError("set either interval or cron, not both")
        if self.max_records < self.min_records:
            raise ValueError("max_records must be >= min_records")
        return self


class DiversityConfig(Section):
    """The training-window checks: policy, history reference period and limits."""

    policy: Literal["warn", "block"] = "warn"
    reference: PositiveDuration = Field(default=30 * 86400.0)
    reference_max_records: int = Field(default=50_000, gt=0)
    min_rows_per_column: float = Field(default=10.0, ge=0)
    min_rows_per_parameter: float = Field(default=0.0, ge=0)
    max_duplicate_share: float = Field(default=0.2, ge=0, le=1)
    min_distinct_share: float = Field(default=0.01, ge=0, le=1)
    min_relative_spread: float = Field(default=1e-4, ge=0)
    max_category_share: float = Field(default=0.98, gt=0, le=1)
    min_components: int = Field(default=2, ge=1)
    min_hour_coverage: float = Field(default=0.9, ge=0, le=1)
    min_weekday_coverage: float = Field(default=0.9, ge=0, le=1)
    max_gap_share: float = Field(default=0.25, gt=0, le=1)
    min_range_ratio: float = Field(default=0.25, ge=0, le=1)
    max_contamination_share: float = Field(default=0.1, ge=0, le=1)

    def limits(self) -> dict[str, Any]:
        """The limit fields, as keyword arguments for training.diversity.DiversityLimits."""
        return self.model_dump(exclude={"policy", "reference", "reference_max_records"})


class ReviewConfig(Section):
    """What reviews teach the model: which reviewed outliers join training, and threshold tuning."""

    train_on_dismissed: bool = True
    train_on_confirmed: bool = False
    train_on_unreviewed: bool = False
    tune_threshold: bool = True
    min_verdicts: int = Field(default=20, ge=2)
    max_fpr_factor: float = Field(default=2.0, ge=1.0)

    @property
    def states_into_training(self) -> tuple[str, ...]:
        """Review states whose outliers are trained on as normal records."""
        states = (("dismissed", self.train_on_dismissed), ("confirmed", self.train_on_confirmed),
                  ("unreviewed", self.train_on_unreviewed))
        return tuple(state for state, included in states if included)


class ScoringConfig(Section):
    interval: PositiveDuration = Field(default=5.0)
    # score records as they are ingested (one transaction stores them scored); the score job still scores
    # what waits: records that came before the first model, sequence-mode records, failed attempts
    on_ingest: bool = True
    batch_size: int = Field(default=5000, gt=0)
    top_contributions: int = Field(default=5, ge=1)


class FloorConfig(Section):
    """A numeric feature's least deviation worth an alert: |actual - expected| <= absolute, or
    <= relative * |expected|, counts as within the floor."""

    absolute: float | None = Field(default=None, ge=0)
    relative: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some_floor(self) -> FloorConfig:
        if self.absolute is None and self.relative is None:
            raise ValueError("a floor needs absolute, relative or both")
        return self


class AlertingConfig(Section):
    """Alert hygiene: k-of-n confirmation per key and per-feature deviation floors (both off by default)."""

    confirm_k: int = Field(default=1, ge=1)
    confirm_n: int = Field(default=1, ge=1, le=1000)
    floors: dict[str, FloorConfig] = Field(default_factory=dict)
    floor_top: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _k_of_n(self) -> AlertingConfig:
        if self.confirm_k > self.confirm_n:
            raise ValueError(f"confirm_k ({self.confirm_k}) must be <= confirm_n ({self.confirm_n}): a record "
                             "is flagged when confirm_k of the last confirm_n records of its key pass the threshold")
        return self


class DetectorConfig(Section):
    source: SourceConfig
    ts_field: str = "ts"
    key_field: str = "key"
    # a record timed more than this ahead of its arrival is refused (bad_timestamp): one far-future record
    # would otherwise become the newest, where the training window is measured from
    max_future: PositiveDuration = Field(default=3600.0)
    # a record with more fields than the features plus this many is refused (too_many_fields)
    max_extra_fields: int = Field(default=1000, ge=0, le=1_000_000)
    features: dict[str, FeatureKindName | FeatureConfig]
    model: ModelConfig = Field(default_factory=ModelConfig)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    diversity: DiversityConfig = Field(default_factory=DiversityConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)

    @field_validator("features")
    @classmethod
    def _some_features(
        cls, value: dict[str, FeatureKindName | FeatureConfig]
    ) -> dict[str, FeatureKindName | FeatureConfig]:
        if not value:
            raise ValueError("a detector needs at least one feature")
        return value

    @model_validator(mode="after")
    def _reserved_names(self) -> DetectorConfig:
        for name in self.features:
            if name in (self.ts_field, self.key_field):
                raise ValueError(f"feature {name!r} clashes with ts_field/key_field")
        if isinstance(self.source, PrometheusSourceConfig):
            unknown = sorted(set(self.features) - set(self.source.queries))
            if unknown:
                raise ValueError(f"features {unknown} have no query in source.queries (each feature is a query name)")
        return self

    @field_validator("alerting")
    @classmethod
    def _floors_on_numeric_features(cls, value: AlertingConfig, info: ValidationInfo) -> AlertingConfig:
        features = info.data.get("features")
        if features is None:        # features failed validation: that error is reported instead
            return value
        numeric = [name for name, spec in features.items()
                   if (spec if isinstance(spec, str) else spec.kind) == "numeric"]
        unknown = sorted(set(value.floors) - set(numeric))
        if unknown:
            raise ValueError(f"floors {unknown} name no numeric feature of this detector (numeric: {numeric})")
        return value

    @property
    def max_ahead(self) -> float | None:
        """How far ahead of now a record may be timed (seconds): `max_future`, or None (no limit) for the demo
        source, whose simulated time runs ahead of the clock by design (`speed` times faster)."""
        return None if self.source.type == "demo" else self.max_future

    @cached_property
    def feature_schema(self) -> Schema:
        """The feature schema the model is trained on, in config order (built once: the config is frozen)."""
        features = []
        for name, spec in self.features.items():
            if isinstance(spec, str):
                features.append(Feature(name=name, kind=spec))
            else:
                features.append(Feature(name=name, kind=spec.kind, optional=spec.optional))
        return Schema(features=tuple(features))
