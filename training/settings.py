"""What a model is fitted with and how it scores: the settings classes, each hyperparameter declared once.

`NetworkSettings` holds the autoencoder's hyperparameters; `ModelSettings` (a NetworkSettings with the
preprocessing and scoring settings added) and `training.model.AutoencoderSpec` (one with the input width
added) are both built on it. `ThresholdSettings` is the threshold policy, `Scoring` how a fitted model turns
its parts into a score (stored with the model), `min_rows_for` the fewest rows a fit accepts, and
`settings_from` builds any of these dataclasses from a mapping of its fields (a config section). Imports no
torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from training.choices import (
    PER_KEY,
    SCORE_KINDS,
    SEARCHES,
    THRESHOLD_METHODS,
    Activation,
    Arch,
    NoiseKind,
    PerKey,
    Scaling,
    ScoreKind,
    Search,
    SparsityKind,
    ThresholdMethod,
    Variant,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "COMPONENTS",
    "WIDE",
    "WIDE_ROWS",
    "WIDE_SHARE",
    "ModelSettings",
    "NetworkSettings",
    "Scoring",
    "ThresholdSettings",
    "min_rows_for",
    "network_values",
    "settings_from",
    "wide",
]

logger = logging.getLogger(__name__)

COMPONENTS = ("reconstruction", "distance", "density")     # the parts of a hybrid score, in `weights` order
WIDE = "wide"               # the hybrid score's wide-scale distance (ModelSettings.wide_share), beside COMPONENTS
WIDE_SHARE = 0.0            # ModelSettings.wide_share's default: off (0.2 for windows that hold incidents: README)
FIRST_WINDOW_WIDE_SHARE = 0.2   # the wide scale's share for a window no model screened (a detector's first)
WIDE_ROWS = 2000            # remembered rows the wide-scale distance is measured among (evenly spaced)

S = TypeVar("S", bound="DataclassInstance")


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """The autoencoder's hyperparameters: layer sizes, variant and its options, and the arch of sequence mode.

    `arch` "dense" reads one record per row; "conv" and "lstm" read windows of `window` consecutive
    records (sequence mode). Variants: "dense" (plain), "denoising" (inputs corrupted while
    training: `noise` "gaussian" with std `noise_level`, or "mask" dropping a `noise_level` share of
    inputs), "sparse" (`sparsity` "l1" activity penalty on the code, or "kl" towards a mean
    activation of `sparsity_target`, weighted by `sparsity_weight`), "contractive" (a stochastic
    estimate of the encoder Jacobian's squared Frobenius norm, weighted by `contractive_weight`) and
    "vae" (a beta-VAE: the encoder gives a mean and log-variance, the KL term is weighted by `beta`).
    Validated where a network is specified (`training.model.AutoencoderSpec`).
    """

    hidden: tuple[int, ...] = (64, 32)
    latent: int = 8
    activation: Activation = "relu"
    dropout: float = 0.0
    variant: Variant = "dense"
    noise: NoiseKind = "gaussian"
    noise_level: float = 0.1
    sparsity: SparsityKind = "l1"
    sparsity_weight: float = 1e-3
    sparsity_target: float = 0.05
    contractive_weight: float = 1e-2
    beta: float = 1.0
    window: int = 1
    arch: Arch = "dense"


def network_values(settings: NetworkSettings) -> dict[str, Any]:
    """The NetworkSettings fields of `settings` (or of any subclass of it), by name."""
    return {f.name: getattr(settings, f.name) for f in fields(NetworkSettings)}


@dataclass(frozen=True, slots=True)
class ModelSettings(NetworkSettings):
    """Autoencoder shape and variant (the NetworkSettings fields), and how a record's score is made.

    score "reconstruction": the mean reconstruction error over the record's encoded columns.
    score "elbo" (vae only): reconstruction error plus beta * KL / columns (a negative ELBO).
    score "hybrid": the autoencoder's reconstruction error, the mean distance to the `neighbors`
    nearest of up to `memory_size` remembered training rows, and the local density ratio of those
    neighbours; each is log-standardised on held-out normal rows and averaged with `weights`
    (reconstruction, distance, density), and the score is softplus of that average: positive, about
    0.7 for a typical normal row and about the number of standard deviations above normal for an
    unusual one. `window` > 1 is sequence mode (`arch` "conv" or "lstm"); `time_features`
    adds the hour of day and day of week of each record's timestamp as inputs.
    `review_weight` (hybrid, point-wise): when the fit is given outliers people confirmed, a record
    nearer to one of them than to its normal neighbours scores higher by review_weight * log(distance
    to its normal neighbours / distance to the nearest confirmed outlier); 0 turns it off.
    `neighbor_search` (hybrid): how the nearest remembered rows are found, "exact" or "approximate" (among
    the rows of the few k-means cells of the memory nearest to a record: faster, now and then a neighbour
    missed; `training.memory.NeighborMemory`). `wide_share` (hybrid): a record is also judged at a wide scale,
    by its mean distance to the nearest `wide_share` of (up to WIDE_ROWS evenly spaced) remembered rows,
    log-standardised like the components; the score takes the larger of that and the weighted average. A
    window that holds an incident remembers the incident's records, and they vouch for each other at the scale
    of 5 neighbours; unless the incident is more than `wide_share` of the window, they do not at the wide
    scale. 0 (the default) turns it off: on clean windows it costs precision (bench/results).
    `per_key` "on": when the training frame holds several keys (its
    KEY_COLUMN), each record is also judged against its own key's normal (`training.keys.KeyNormal`); "auto":
    from `training.keys.AUTO_KEYS` keys on (a few keys with many records each the network tells apart by their
    values alone, and the key columns only add noise: the demo's 4 hosts lose incidents with them).
    """

    scaling: Scaling = "standard"
    score: ScoreKind = "hybrid"
    neighbors: int = 5
    memory_size: int = 50_000
    weights: tuple[float, float, float] = (0.3, 1.0, 0.5)
    time_features: bool = False
    review_weight: float = 4.0
    neighbor_search: Search = "approximate"
    per_key: PerKey = "auto"
    wide_share: float = WIDE_SHARE

    def __post_init__(self) -> None:
        if not 0.0 <= self.wide_share < 0.5:
            raise ValueError(f"ModelSettings.wide_share must be in [0, 0.5), got {self.wide_share!r}")
        if self.per_key not in PER_KEY:
            raise ValueError(f"ModelSettings.per_key must be one of {PER_KEY}, got {self.per_key!r}")
        if self.neighbor_search not in SEARCHES:
            raise ValueError(f"ModelSettings.neighbor_search must be one of {SEARCHES}, got {self.neighbor_search!r}")
        if self.score not in SCORE_KINDS:
            raise ValueError(f"ModelSettings.score must be one of {SCORE_KINDS}, got {self.score!r}")
        if self.score == "elbo" and self.variant != "vae":
            raise ValueError("ModelSettings.score 'elbo' needs variant 'vae'")
        if self.neighbors < 1 or self.memory_size < 2 * self.neighbors:
            raise ValueError("ModelSettings needs neighbors >= 1 and memory_size >= 2 * neighbors")
        if len(self.weights) != 3 or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"ModelSettings.weights must be 3 non-negative numbers, not all 0, got {self.weights!r}")
        if self.window < 1:
            raise ValueError(f"ModelSettings.window must be >= 1, got {self.window}")
        if not self.review_weight >= 0:
            raise ValueError(f"ModelSettings.review_weight must be >= 0, got {self.review_weight!r}")
        arch = "dense" if self.window == 1 else self.arch
        if arch == "dense" and self.window > 1:
            raise ValueError("ModelSettings.window > 1 needs arch 'conv' or 'lstm'")
        object.__setattr__(self, "arch", arch)

    @property
    def network(self) -> NetworkSettings:
        """The autoencoder's part of these settings."""
        return NetworkSettings(**network_values(self))


@dataclass(frozen=True, slots=True)
class ThresholdSettings:
    """Threshold policy on held-out normal scores: "quantile" (the 1 - target_fpr quantile), "sigma"
    (mean + k * std), "mad" (median + k * 1.4826 * MAD) or "pot" (a generalized Pareto tail fit at
    risk target_fpr). Windows of at most `fold_max_rows` rows calibrate on every row, scored out of
    fold by `calibration_folds` networks; larger ones on the validation split."""

    method: ThresholdMethod = "quantile"
    target_fpr: float = 0.01
    k: float = 3.0
    calibration_folds: int = 5
    fold_max_rows: int = 5000

    def __post_init__(self) -> None:
        if self.method not in THRESHOLD_METHODS:
            raise ValueError(f"ThresholdSettings.method must be one of {THRESHOLD_METHODS}, got {self.method!r}")
        if not 0.0 < self.target_fpr < 0.5:
            raise ValueError(f"ThresholdSettings.target_fpr must be in (0, 0.5), got {self.target_fpr!r}")
        if not self.k > 0:
            raise ValueError(f"ThresholdSettings.k must be > 0, got {self.k!r}")
        if self.calibration_folds < 1 or self.fold_max_rows < 0:
            raise ValueError("ThresholdSettings needs calibration_folds >= 1 and fold_max_rows >= 0")


@dataclass(frozen=True)
class Scoring:
    """How a fitted model turns its parts into a score (JSON-able; stored with the model)."""

    kind: ScoreKind = "reconstruction"
    weights: tuple[float, float, float] = (0.3, 1.0, 0.5)
    neighbors: int = 5
    # per component: (mean, std, eps) of log(value + eps) on held-out normal rows
    normalizer: dict[str, tuple[float, float, float]] | None = None
    time_features: bool = False
    window: int = 1
    # how much being nearer to a confirmed outlier than to normal neighbours adds (hybrid; 0: off)
    review_weight: float = 0.0
    # how the memory finds the nearest rows (hybrid): the search the threshold was calibrated with
    search: Search = "exact"
    # the wide-scale distance (hybrid): the mean distance to the wide_k nearest of wide_rows evenly spaced
    # remembered rows (NeighborMemory.wide_distance); 0: none (and models stored before it)
    wide_rows: int = 0
    wide_k: int = 0

    @property
    def has_wide(self) -> bool:
        return self.kind == "hybrid" and self.wide_k > 0 and self.normalizer is not None and WIDE in self.normalizer

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "weights": list(self.weights), "neighbors": self.neighbors,
                "normalizer": None if self.normalizer is None else {k: list(v) for k, v in self.normalizer.items()},
                "time_features": self.time_features, "window": self.window, "review_weight": self.review_weight,
                "search": self.search, "wide_rows": self.wide_rows, "wide_k": self.wide_k}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scoring:
        kind = d["kind"]
        if kind not in SCORE_KINDS:
            raise ValueError(f"unknown score kind {kind!r}")
        normalizer = d.get("normalizer")
        weights = tuple(float(w) for w in d["weights"])
        if len(weights) != 3:
            raise ValueError("weights must have 3 numbers")
        search = d.get("search", "exact")        # models stored before the approximate search: exact
        if search not in SEARCHES:
            raise ValueError(f"unknown neighbour search {search!r}")
        return cls(kind=kind, weights=(weights[0], weights[1], weights[2]), neighbors=int(d["neighbors"]),
                   normalizer=None if normalizer is None else {
                       str(k): (float(v[0]), float(v[1]), float(v[2])) for k, v in dict(normalizer).items()},
                   time_features=bool(d.get("time_features", False)), window=int(d.get("window", 1)),
                   review_weight=float(d.get("review_weight", 0.0)), search=search,
                   wide_rows=int(d.get("wide_rows", 0)), wide_k=int(d.get("wide_k", 0)))


MIN_ROWS = 32               # the fewest rows a fit accepts, whatever the width
WIDE_ROWS_PER_COLUMN = 2    # below this many rows per encoded column a hybrid model scores by its memory alone


def min_rows_for(n_columns: int) -> int:
    """Fewest training rows accepted for a model with `n_columns` encoded columns: MIN_ROWS, whatever the
    width. A window narrower than WIDE_ROWS_PER_COLUMN rows per column trains anyway (`wide`)."""
    return MIN_ROWS


def wide(n_rows: int, n_columns: int) -> bool:
    """Whether a window of `n_rows` is too narrow for its `n_columns` encoded columns to learn how they relate:
    a hybrid model then scores by its neighbour memory alone (the reconstruction weight is 0)."""
    return n_rows < WIDE_ROWS_PER_COLUMN * n_columns


def settings_from(cls: type[S], values: Mapping[str, Any], **renamed: str) -> S:
    """An instance of the settings dataclass `cls`, each field read from `values` by its name, or by the
    key `renamed` gives for it (`weights="score_weights"`). Keys of `values` that name no field are
    ignored; a field missing from `values` keeps its default. The class validates the values as usual."""
    unknown = sorted(set(renamed) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    chosen = {f.name: values[renamed.get(f.name, f.name)] for f in fields(cls)
              if f.init and renamed.get(f.name, f.name) in values}
    return cls(**chosen)
