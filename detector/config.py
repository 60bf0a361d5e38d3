"""Load and validate config.toml: one frozen, strict pydantic model per section."""

from __future__ import annotations

import logging
import re
import tomllib
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from detector.allocator import DEFAULT_CACHE_MIB, MAX_CACHE_MIB
from detector.errors import ConfigError
from training.schema import Feature, Schema

__all__ = [
    "AlertingConfig",
    "Config",
    "DaemonConfig",
    "DemoSourceConfig",
    "DetectorConfig",
    "DiversityConfig",
    "FileSourceConfig",
    "FloorConfig",
    "HttpConfig",
    "HttpSourceConfig",
    "ModelConfig",
    "PrometheusSourceConfig",
    "ReviewConfig",
    "ScoringConfig",
    "SourceConfig",
    "SqlSourceConfig",
    "StoreConfig",
    "ThresholdConfig",
    "TrainingConfig",
    "load_config",
    "parse_duration",
]

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as "500ms", "30s", "5m", "2h", "7d", "1w"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m', '2h', '7d'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    raise ValueError(f"{value!r} is not a duration: use seconds or a string like '30s', '5m', '2h', '7d'")


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DaemonConfig(Section):
    state_dir: Path = Field(default=Path("state"))
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    torch_threads: int = Field(default=1, ge=0)
    malloc_cache_mib: int = Field(default=DEFAULT_CACHE_MIB, ge=0, le=MAX_CACHE_MIB)


class StoreConfig(Section):
    url: str | None = None
    retention: PositiveDuration = Field(default=7 * 86400.0)
    reject_retention: PositiveDuration = Field(default=7 * 86400.0)
    retention_interval: PositiveDuration = Field(default=3600.0)
    keep_model_versions: int = Field(default=10, ge=1)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
        return value


class HttpConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8321, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_batch_records: int = Field(default=10_000, gt=0)
    token_file: Path = Field(default=Path("api-token"))
    read_requires_token: bool = False


class DemoSourceConfig(Section):
    type: Literal["demo"]
    hosts: int = Field(default=4, ge=1, le=100)
    step: PositiveDuration = Field(default=60.0)
    seed: int = 7
    incident_rate: float = Field(default=0.02, ge=0.0, lt=0.5)
    history: Duration = Field(default=86400.0, ge=0)
    speed: float = Field(default=12.0, gt=0)
    poll_interval: PositiveDuration = Field(default=5.0)


class HttpSourceConfig(Section):
    type: Literal["http"]


class FileSourceConfig(Section):
    type: Literal["file"]
    path: Path
    format: Literal["auto", "csv", "parquet", "ndjson"] = "auto"
    poll_interval: PositiveDuration = Field(default=5.0)
    settle: Duration = Field(default=2.0, ge=0)


class PrometheusSourceConfig(Section):
    type: Literal["prometheus"]
    url: str
    queries: dict[str, str]
    step: PositiveDuration = Field(default=60.0)
    key_label: str | None = None
    lag: Duration = Field(default=30.0, ge=0)
    backfill: Duration = Field(default=86400.0, ge=0)
    poll_interval: PositiveDuration = Field(default=30.0)
    timeout: PositiveDuration = Field(default=10.0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL of the Prometheus server")
        return value

    @field_validator("queries")
    @classmethod
    def _some_queries(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("give at least one PromQL expression: queries = { name = 'expr' }")
        for name, expr in value.items():
            if not expr.strip():
                raise ValueError(f"query {name!r} is empty")
        return value


_SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,127}$")


class SqlSourceConfig(Section):
    type: Literal["sql"]
    url: str
    table: str | None = None
    query: str | None = Field(default=None, validate_default=True)
    order_column: str
    batch_size: int = Field(default=5000, gt=0)
    max_batches: int = Field(default=20, gt=0)
    poll_interval: PositiveDuration = Field(default=10.0)
    timeout: PositiveDuration = Field(default=10.0)
    initial: datetime | int | str | None = None

    @field_validator("url")
    @classmethod
    def _sqlalchemy_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value).get_dialect().import_dbapi()
        except ArgumentError as exc:
            raise ValueError(f"not a usable SQLAlchemy URL: {exc}") from None
        except ImportError as exc:
            raise ValueError(f"the database driver of this URL is not installed: {exc}") from None
        return value

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        if value is not None:
            parts = value.split(".")
            if len(parts) > 2 or not all(_SQL_IDENTIFIER.match(part) for part in parts):
                raise ValueError("must be a table name (letters, digits, '_', '$'), optionally schema.table")
        return value

    @field_validator("query")
    @classmethod
    def _table_or_query(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "table" not in info.data:        # table itself is invalid (and reported)
            return value
        if value is not None and info.data["table"] is not None:
            raise ValueError("set either table or query, not both")
        if value is None and info.data["table"] is None:
            raise ValueError("set table = 'name' or query = 'SELECT ...'")
        if value is not None:
            value = value.strip().removesuffix(";").rstrip()
            if not re.match(r"(?is)^(select|with)\b", value):
                raise ValueError("must be a SELECT (or WITH ... SELECT) statement")
        return value

    @field_validator("order_column")
    @classmethod
    def _column_name(cls, value: str) -> str:
        if not _SQL_IDENTIFIER.match(value):
            raise ValueError("must be a column name (letters, digits, '_', '$')")
        return value

    @field_validator("initial", mode="before")
    @classmethod
    def _initial(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("initial is a duration back from now ('7d'), an ISO time, or an integer")
        if isinstance(value, str):
            try:
                parse_duration(value)
            except ValueError:
                try:
                    datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
                except ValueError:
                    raise ValueError("initial is a duration back from now ('7d'), an ISO time, "
                                     "or an integer") from None
        return value

SourceConfig = Annotated[
    DemoSourceConfig | HttpSourceConfig | FileSourceConfig | PrometheusSourceConfig | SqlSourceConfig,
    Field(discriminator="type"),
]


class FeatureConfig(Section):
    kind: Literal["numeric", "categorical", "boolean"]
    optional: bool = False


FeatureKindName = Literal["numeric", "categorical", "boolean"]


class ModelConfig(Section):
    hidden: tuple[int, ...] = Field(default=(64, 32))
    latent: int = Field(default=8, gt=0)
    activation: Literal["relu", "tanh", "gelu", "elu", "leaky_relu"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    variant: Literal["dense", "denoising", "sparse", "contractive", "vae"] = "dense"
    noise: Literal["gaussian", "mask"] = "gaussian"
    noise_level: float = Field(default=0.1, ge=0.0, lt=1.0)
    sparsity: Literal["l1", "kl"] = "l1"
    sparsity_weight: float = Field(default=1e-3, ge=0.0)
    sparsity_target: float = Field(default=0.05, gt=0.0, lt=1.0)
    contractive_weight: float = Field(default=1e-2, ge=0.0)
    beta: float = Field(default=1.0, ge=0.0)
    scaling: Literal["standard", "robust"] = "standard"
    score: Literal["hybrid", "reconstruction", "elbo"] = "hybrid"
    neighbors: int = Field(default=5, gt=0, le=100)
    memory_size: int = Field(default=50_000, ge=10, le=1_000_000)
    score_weights: tuple[float, float, float] = Field(default=(0.3, 1.0, 0.5))
    window: int = Field(default=1, ge=1, le=1024)
    arch: Literal["conv", "lstm"] = "conv"
    time_features: bool = False
    review_weight: float = Field(default=4.0, ge=0.0, le=100.0)
    neighbor_search: Literal["approximate", "exact"] = "approximate"
    loss: Literal["mse", "l1", "bce"] = "mse"
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
    method: Literal["quantile", "sigma", "mad", "pot"] = "quantile"
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
    min_rows_per_parameter: float = Field(default=1.0, ge=0)
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


class Config(Section):
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    detectors: dict[str, DetectorConfig] = Field(default_factory=dict)

    @field_validator("detectors")
    @classmethod
    def _detector_names(cls, value: dict[str, DetectorConfig]) -> dict[str, DetectorConfig]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"detector name {name!r} must be lower case letters, digits, '-' or '_', "
                    "starting with a letter, at most 64 characters"
                )
        return value

    @property
    def store_url(self) -> str:
        """The SQLAlchemy URL of the store: the configured one, else SQLite under state_dir."""
        if self.store.url:
            return self.store.url
        return f"sqlite:///{self.daemon.state_dir / 'vigil.db'}"

    @property
    def token_path(self) -> Path:
        return self.http.token_file


def _key_path(loc: tuple[int | str, ...], raw: Any, missing: bool) -> str:
    """The dotted key of an error in the file: union branch labels in `loc` (a source's
    `type` tag such as "http", or "FeatureConfig") are not keys of the input and are skipped."""
    keys, node = [], raw
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            keys.append(str(part))
            node = node[part]
        elif missing and i == len(loc) - 1:
            keys.append(str(part))
    return ".".join(keys)


def _format_errors(exc: ValidationError, raw: Any) -> str:
    parts = []
    for error in exc.errors():
        loc = _key_path(error["loc"], raw, error["type"] == "missing")
        if error["type"] == "extra_forbidden":
            msg = "unknown key"
        elif error["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = str(error["msg"]).removeprefix("Value error, ")
            secret = loc.rsplit(".", 1)[-1] in ("url", "password", "token")   # may hold a password
            if "input" in error and error["type"] not in ("model_type", "dict_type") and not secret:
                msg += f" (got {error['input']!r})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path)


def _resolve_sqlite_url(base: Path, url: str) -> str:
    """A SQLite URL whose relative file path is taken from `base`; other URLs unchanged."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:") or Path(database).is_absolute():
        return url
    return parsed.set(database=str(base / database)).render_as_string(hide_password=False)


def _resolve_paths(config: Config, base: Path) -> Config:
    state_dir = _resolve(base, config.daemon.state_dir)
    url = config.store.url
    if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        url = f"sqlite:///{_resolve(base, Path(url.removeprefix('sqlite:///')))}"
    detectors = {}
    for name, det in config.detectors.items():
        if isinstance(det.source, FileSourceConfig):
            folder = _resolve(base, det.source.path)
            if not folder.is_dir():
                raise ConfigError(base, f"detectors.{name}.source.path: directory {folder} not found")
            det = det.model_copy(update={"source": det.source.model_copy(update={"path": folder})})
        elif isinstance(det.source, SqlSourceConfig):
            source_url = _resolve_sqlite_url(base, det.source.url)
            det = det.model_copy(update={"source": det.source.model_copy(update={"url": source_url})})
        detectors[name] = det
    return config.model_copy(
        update={
            "daemon": config.daemon.model_copy(update={"state_dir": state_dir}),
            "store": config.store.model_copy(update={"url": url}),
            "http": config.http.model_copy(update={"token_file": _resolve(state_dir, config.http.token_file)}),
            "detectors": detectors,
        }
    )


def load_config(path: Path | str) -> Config:
    """Read, validate and resolve a config file; relative paths are taken from the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "file not found") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
        config = Config.model_validate(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(path, _format_errors(exc, raw)) from None
    try:
        return _resolve_paths(config, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(path, exc.problem) from None
