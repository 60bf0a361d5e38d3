"""Fit a complete model (preprocessing, autoencoder, threshold) on a window of records, and score with it."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from training._jsonable import to_jsonable
from training.artifact import (
    FORMAT,
    FORMAT_VERSION,
    check_envelope,
    network_from_bytes,
    network_to_bytes,
    read_part,
)
from training.errors import ArtifactError, InsufficientDataError
from training.loop import (
    MIN_TRAIN_ROWS,
    EpochStats,
    LossName,
    TrainOutcome,
    TrainSettings,
    resolve_device,
    train_autoencoder,
)
from training.memory import SEARCHES, NeighborMemory, Search, nearest_distance
from training.model import Activation, Arch, AutoencoderSpec, DenseAutoencoder, NoiseKind, SparsityKind, Variant
from training.preprocess import Preprocessor, Scaling, numeric_block
from training.schema import Schema
from training.sequence import KEY_COLUMN, TIME_FEATURES, TS_COLUMN, time_features, windows
from training.thresholds import THRESHOLD_METHODS, Threshold, ThresholdMethod, fit_threshold

__all__ = [
    "KEY_COLUMN",
    "TS_COLUMN",
    "FittedModel",
    "ModelSettings",
    "ScoreResult",
    "ThresholdSettings",
    "fit_model",
    "min_rows_for",
]

logger = logging.getLogger(__name__)

TRIM_SPREADS = 2.0         # first-window trim: how far beyond the held-out 95th percentile a row must score
OUT_OF_RANGE_SPANS = 0.5   # a value beyond the training range by more than half its width is out of range
MAX_INCIDENTS = 5000       # confirmed outliers a hybrid model remembers (the newest ones when there are more)


ScoreKind = Literal["hybrid", "reconstruction", "elbo"]
SCORE_KINDS: tuple[str, ...] = get_args(ScoreKind)
COMPONENTS = ("reconstruction", "distance", "density")


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Autoencoder shape and variant, and how a record's score is made.

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
    missed; `training.memory.NeighborMemory`).
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
    scaling: Scaling = "standard"
    score: ScoreKind = "hybrid"
    neighbors: int = 5
    memory_size: int = 50_000
    weights: tuple[float, float, float] = (0.3, 1.0, 0.5)
    window: int = 1
    arch: Arch = "dense"
    time_features: bool = False
    review_weight: float = 4.0
    neighbor_search: Search = "approximate"

    def __post_init__(self) -> None:
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

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "weights": list(self.weights), "neighbors": self.neighbors,
                "normalizer": None if self.normalizer is None else {k: list(v) for k, v in self.normalizer.items()},
                "time_features": self.time_features, "window": self.window, "review_weight": self.review_weight,
                "search": self.search}

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
                   review_weight=float(d.get("review_weight", 0.0)), search=search)


def min_rows_for(n_columns: int) -> int:
    """Fewest training rows accepted for a model with `n_columns` encoded columns."""
    return max(32, 2 * n_columns)


Rows = Sequence[int] | npt.NDArray[np.integer[Any]] | npt.NDArray[np.bool_] | slice
"""A 1-D selection of a result's rows: positions, a boolean mask or a slice (as numpy indexing takes them)."""


class ScoreResult:
    """Scores of n records and their explanation.

    scores [n] (higher = more anomalous), is_outlier [n] (scores > threshold), contributions
    [n, n_features] (each row sums to its score), expected (decoded reconstruction, one column per
    feature), unseen [n, n_features] (categorical value never seen in training).

    `contributions` and `expected` may be given as functions of the rows (a `Rows` selection, or
    `slice(None)` for all): they are then computed on first access and kept. `contributions_at(rows)` and
    `expected_at(rows)` give the same as `contributions[rows]` and `expected.iloc[rows]` without computing
    the other rows (a scorer needs them for its few flagged rows only).
    """

    __slots__ = ("_contributions", "_contributions_of", "_expected", "_expected_of", "components", "feature_names",
                 "is_outlier", "out_of_range", "scores", "threshold", "unseen")

    def __init__(
        self,
        scores: npt.NDArray[np.float64],
        threshold: float,
        is_outlier: npt.NDArray[np.bool_],
        contributions: npt.NDArray[np.float64] | Callable[[Rows], npt.NDArray[np.float64]],
        expected: pd.DataFrame | Callable[[Rows], pd.DataFrame],
        unseen: npt.NDArray[np.bool_],
        feature_names: list[str],
        out_of_range: npt.NDArray[np.bool_] | None = None,
        components: dict[str, npt.NDArray[np.float64]] | None = None,
    ) -> None:
        self.scores = scores
        self.threshold = threshold
        self.is_outlier = is_outlier
        self.unseen = unseen
        self.feature_names = feature_names
        self.out_of_range = out_of_range
        self.components = components
        self._contributions: npt.NDArray[np.float64] | None = None
        self._contributions_of: Callable[[Rows], npt.NDArray[np.float64]] | None = None
        if callable(contributions):
            self._contributions_of = contributions
        else:
            self._contributions = contributions
        self._expected: pd.DataFrame | None = None
        self._expected_of: Callable[[Rows], pd.DataFrame] | None = None
        if callable(expected):
            self._expected_of = expected
        else:
            self._expected = expected

    @property
    def contributions(self) -> npt.NDArray[np.float64]:
        """[n, n_features] float64: each score split over the features."""
        if self._contributions is None:
            if self._contributions_of is None:
                raise RuntimeError("a ScoreResult without contributions")
            self._contributions = self._contributions_of(slice(None))
        return self._contributions

    @property
    def expected(self) -> pd.DataFrame:
        """The decoded reconstruction: one row per record, one column per feature."""
        if self._expected is None:
            if self._expected_of is None:
                raise RuntimeError("a ScoreResult without expected values")
            self._expected = self._expected_of(slice(None))
        return self._expected

    def _positions(self, rows: Rows) -> npt.NDArray[np.intp]:
        positions = np.arange(len(self.scores))[rows]
        if positions.ndim != 1:
            raise ValueError("rows must select a 1-D set of rows (positions, a boolean mask or a slice)")
        return positions

    def contributions_at(self, rows: Rows) -> npt.NDArray[np.float64]:
        """`contributions[rows]` ([len(rows), n_features]), computed for those rows only when not yet at hand."""
        positions = self._positions(rows)
        if self._contributions is not None or self._contributions_of is None:
            return self.contributions[positions]
        return self._contributions_of(positions)

    def expected_at(self, rows: Rows) -> pd.DataFrame:
        """`expected.iloc[rows]` (index: the rows' positions), decoded for those rows only when not yet at hand."""
        positions = self._positions(rows)
        if self._expected is not None or self._expected_of is None:
            return self.expected.iloc[positions]
        return self._expected_of(positions)

    def out_of_distribution(self, i: int) -> dict[str, list[str]] | None:
        """Row i's features the model never saw values like: unseen categories, numbers far out of range."""
        unseen = [self.feature_names[j] for j in np.flatnonzero(self.unseen[i])]
        far = [] if self.out_of_range is None else [self.feature_names[j] for j in np.flatnonzero(self.out_of_range[i])]
        if not unseen and not far:
            return None
        return {"unseen_category": unseen, "out_of_range": far}

    def top_contributions(self, i: int, actual: Mapping[str, Any], k: int = 5) -> list[dict[str, Any]]:
        """Up to k features of row i with the largest contributions, largest first, JSON-able.

        `actual` maps feature names to the record's values (a missing name gives None).
        """
        row = self.contributions[i]          # all rows at once (kept): callers ask row after row
        score = float(self.scores[i])
        order = np.argsort(-row, kind="stable")[: max(k, 0)]
        expected = self.expected.iloc[i]
        return [
            {
                "feature": self.feature_names[j],
                "contribution": to_jsonable(row[j]),
                "share": to_jsonable(row[j] / score) if score > 0 else 0.0,
                "actual": to_jsonable(actual.get(self.feature_names[j])),
                "expected": to_jsonable(expected.iloc[j]),
            }
            for j in order
        ]


class FittedModel:
    """A trained model: schema, preprocessor, network (on CPU, eval mode), neighbour memory (hybrid
    scoring), threshold and training report."""

    def __init__(
        self,
        schema: Schema,
        preprocessor: Preprocessor,
        spec: AutoencoderSpec,
        loss: LossName,
        threshold: Threshold,
        network: DenseAutoencoder,
        report: dict[str, Any],
        ranges: Mapping[str, tuple[float, float]] | None = None,
        scoring: Scoring | None = None,
        memory: NeighborMemory | None = None,
        incidents: torch.Tensor | None = None,
    ) -> None:
        self.schema = schema
        self.preprocessor = preprocessor
        self.spec = spec
        self.loss: LossName = loss
        self.threshold = threshold
        self.network = network.cpu().eval()
        self.report = report
        self.ranges: dict[str, tuple[float, float]] = dict(ranges or {})
        self._bounds: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None    # of `ranges`
        self.scoring = scoring or Scoring()
        if self.scoring.kind == "hybrid" and (memory is None or self.scoring.normalizer is None):
            raise ValueError("a hybrid model needs a neighbour memory and a normalizer")
        self.memory = memory
        # network inputs of outliers people confirmed [m, n_inputs] (hybrid scoring with review_weight > 0)
        self.incidents = incidents if incidents is not None and incidents.shape[0] > 0 else None
        # held-out normal scores of the run that fitted the threshold (kept in memory, not in the artifact)
        self.val_scores: npt.NDArray[np.float64] | None = None

    @property
    def needs_history(self) -> bool:
        """Whether scoring a record needs the records of its key before it (sequence mode)."""
        return self.scoring.window > 1

    def inputs(self, frame: pd.DataFrame, history: pd.DataFrame | None = None) -> npt.NDArray[np.float32]:
        """The network's input rows for the rows of `frame` [n, spec.n_inputs].

        In sequence mode `history` (earlier records of the same keys, not scored) completes the windows.
        """
        full = frame if history is None or len(history) == 0 else pd.concat([history, frame], ignore_index=True)
        x = self.preprocessor.transform(full)
        if self.scoring.time_features:
            x = np.concatenate([x, time_features(full)], axis=1)
        if self.scoring.window > 1:
            x = windows(x, full, self.scoring.window)
        return np.ascontiguousarray(x[len(full) - len(frame):], dtype=np.float32)

    def encode(self, frame: pd.DataFrame, batch_size: int = 8192) -> npt.NDArray[np.float32]:
        """Latent codes [n, latent] of the rows of `frame` (the code's mean for a variational model)."""
        x = self.inputs(frame)
        codes = np.empty((len(x), self.spec.latent), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch = torch.from_numpy(x[start : start + batch_size])
                codes[start : start + batch_size] = self.network.encode(batch).numpy()
        return codes

    def score(
        self, frame: pd.DataFrame, batch_size: int = 8192, device: str | torch.device = "cpu",
        history: pd.DataFrame | None = None, reviews: bool = True,
    ) -> ScoreResult:
        """Score every row of `frame` (columns must include the schema's features; KeyError otherwise).

        A score that is NaN (only possible for inputs beyond float32 range) is reported as +inf, so the
        record counts as an outlier instead of silently passing. Contributions split each score over
        the features; `expected` is the autoencoder's reconstruction. `reviews=False` leaves the
        confirmed outliers out of the score (to score those same outliers without their own echo).
        """
        fast = None
        if (history is None or len(history) == 0) and not self.scoring.time_features and self.scoring.window == 1:
            fast = self.preprocessor.transform_flagged(frame, *self._range_bounds())
        if fast is not None:           # all required numeric features: one pass for the inputs and the ranges
            x, far = fast
        else:
            x, far = self.inputs(frame, history), self.out_of_range(frame)
        target = device if isinstance(device, torch.device) else resolve_device(device)
        parts = _score_parts(self, x, batch_size, target, reviews)
        scores = np.where(np.isnan(parts.scores), np.inf, parts.scores)
        return ScoreResult(
            out_of_range=far,
            scores=scores,
            threshold=self.threshold.value,
            is_outlier=scores > self.threshold.value,
            contributions=parts.contributions,
            expected=_Decoded(self.preprocessor, parts.recon),
            unseen=self.preprocessor.unseen_mask(frame),
            feature_names=self.schema.names,
            components=parts.components,
        )

    def _range_bounds(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Per feature (schema order): the values below / above which `out_of_range` flags a value
        (-inf / inf for a feature it does not check). Computed once: the ranges do not change."""
        if self._bounds is not None:
            return self._bounds
        below = np.full(len(self.schema.features), -np.inf)
        above = np.full(len(self.schema.features), np.inf)
        checked = [(j, name) for j, name in enumerate(self.schema.names) if name in self.ranges]
        if checked:
            lows = np.array([self.ranges[name][0] for _, name in checked])
            highs = np.array([self.ranges[name][1] for _, name in checked])
            margins = OUT_OF_RANGE_SPANS * np.maximum(np.maximum(highs - lows, np.abs(highs) * 1e-6), 1e-12)
            columns = [j for j, _ in checked]
            below[columns] = lows - margins
            above[columns] = highs + margins
        below.flags.writeable = above.flags.writeable = False
        self._bounds = (below, above)
        return self._bounds

    def out_of_range(self, frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
        """[n, n_features]: numeric values more than OUT_OF_RANGE_SPANS training ranges beyond its edges."""
        mask = np.zeros((len(frame), len(self.schema.features)), dtype=bool)
        checked = [(j, name) for j, name in enumerate(self.schema.names) if name in self.ranges]
        block = numeric_block(frame, [name for _, name in checked], copy=False)
        if block is not None:               # plain numeric columns: one comparison for the whole block
            below, above = self._range_bounds()
            columns = [j for j, _ in checked]
            with np.errstate(invalid="ignore"):
                if len(columns) == mask.shape[1]:       # every feature is checked: the mask is the comparison
                    return np.asarray((block < below) | (block > above))
                mask[:, columns] = (block < below[columns]) | (block > above[columns])
            return mask
        for j, name in enumerate(self.schema.names):
            if name not in self.ranges:
                continue
            low, high = self.ranges[name]
            margin = OUT_OF_RANGE_SPANS * max(high - low, abs(high) * 1e-6, 1e-12)
            values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                mask[:, j] = (values < low - margin) | (values > high + margin)
        return mask

    def to_artifact(self) -> tuple[bytes, dict[str, Any]]:
        """Safetensors bytes of the network weights (and the neighbour memory), JSON-able metadata for the rest."""
        extra = None
        if self.memory is not None:
            extra = {MEMORY_BANK: self.memory.bank, MEMORY_KDIST: self.memory.kdist}
            if self.incidents is not None:
                extra[INCIDENTS] = self.incidents
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "schema": self.schema.to_dict(),
            "preprocessor": self.preprocessor.to_dict(),
            "spec": self.spec.to_dict(),
            "loss": self.loss,
            "threshold": self.threshold.to_dict(),
            "report": to_jsonable(self.report),
            "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in self.ranges.items()},
            "scoring": self.scoring.to_dict(),
        }
        return network_to_bytes(self.network, extra), meta

    @classmethod
    def from_artifact(cls, weights: bytes, meta: Mapping[str, Any]) -> FittedModel:
        """Rebuild a model from `to_artifact` output; ArtifactError if it cannot be interpreted.

        Weights are read with safetensors only: loading an artifact cannot execute code.
        """
        check_envelope(meta)
        schema = read_part(meta, "schema", Schema.from_dict)
        preprocessor = read_part(meta, "preprocessor", Preprocessor.from_dict)
        spec = read_part(meta, "spec", AutoencoderSpec.from_dict)
        threshold = read_part(meta, "threshold", Threshold.from_dict)
        scoring = read_part(meta, "scoring", Scoring.from_dict) if "scoring" in meta else Scoring()
        loss = meta["loss"]
        if loss not in get_args(LossName):
            raise ArtifactError(f"unknown loss {loss!r}")
        if not isinstance(meta["report"], Mapping):
            raise ArtifactError("'report' must be a mapping")
        if preprocessor.schema != schema:
            raise ArtifactError("the preprocessor was fitted for a different schema than 'schema'")
        per_record = preprocessor.n_columns + (len(TIME_FEATURES) if scoring.time_features else 0)
        if spec.n_inputs != per_record * scoring.window:
            raise ArtifactError(
                f"spec.n_inputs is {spec.n_inputs} but the preprocessor makes {preprocessor.n_columns} "
                f"columns per record (window {scoring.window})"
            )
        if (loss == "bce") != (spec.output == "sigmoid"):
            raise ArtifactError(f"loss {loss!r} does not fit a spec with output {spec.output!r}")
        network, extra = network_from_bytes(weights, spec, optional=(MEMORY_BANK, MEMORY_KDIST, INCIDENTS))
        memory = None
        if scoring.kind == "hybrid":
            if MEMORY_BANK not in extra or MEMORY_KDIST not in extra or scoring.normalizer is None:
                raise ArtifactError("a hybrid model's artifact lacks its neighbour memory or normalizer")
            bank, kdist = extra[MEMORY_BANK], extra[MEMORY_KDIST]
            if bank.ndim != 2 or bank.shape[1] != spec.n_inputs or kdist.shape != (bank.shape[0],):
                raise ArtifactError(f"neighbour memory has shape {tuple(bank.shape)}, expected [m, {spec.n_inputs}]")
            try:
                memory = NeighborMemory(bank, kdist, scoring.neighbors, scoring.search)
            except ValueError as exc:
                raise ArtifactError(f"bad neighbour memory: {exc}") from exc
            memory.prepare()          # the approximate search's cells: made now, not by the first batch
        incidents = extra.get(INCIDENTS)
        if incidents is not None and (incidents.ndim != 2 or incidents.shape[1] != spec.n_inputs):
            raise ArtifactError(
                f"confirmed outliers have shape {tuple(incidents.shape)}, expected [m, {spec.n_inputs}]")
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in dict(meta.get("ranges") or {}).items()}
        return cls(schema, preprocessor, spec, loss, threshold, network, dict(meta["report"]), ranges,
                   scoring, memory, incidents)


MEMORY_BANK = "__memory__.bank"
MEMORY_KDIST = "__memory__.kdist"
INCIDENTS = "__memory__.confirmed"


@dataclass(frozen=True)
class _Parts:
    scores: npt.NDArray[np.float64]
    contributions: npt.NDArray[np.float64] | Callable[[Rows], npt.NDArray[np.float64]]
    recon: npt.NDArray[np.float32]
    components: dict[str, npt.NDArray[np.float64]] | None


class _Decoded:
    """`Preprocessor.decode` of the reconstructions of some rows (ScoreResult.expected on demand)."""

    __slots__ = ("preprocessor", "recon")

    def __init__(self, preprocessor: Preprocessor, recon: npt.NDArray[np.float32]) -> None:
        self.preprocessor = preprocessor
        self.recon = recon

    def __call__(self, rows: Rows) -> pd.DataFrame:
        if isinstance(rows, slice) and rows == slice(None):
            return self.preprocessor.decode(self.recon)
        positions = np.asarray(rows, dtype=np.intp)
        frame = self.preprocessor.decode(self.recon[positions])
        frame.index = pd.Index(positions, dtype=np.int64)
        return frame


class _ErrorShares:
    """Contributions of the reconstruction-based scores (ScoreResult.contributions on demand): each row's
    score split over the features in proportion to their reconstruction error (in float64: a row's
    contributions sum to its score).

    The error is computed for the rows asked for from their reconstruction and network inputs (the scored
    record's columns of each), the same float32 values as the score was summed from: a scorer asks for its
    few flagged rows, and the whole batch's error array is kept nowhere.
    """

    __slots__ = ("features", "l1", "recon", "scores", "x")

    def __init__(self, recon: npt.NDArray[np.float32], x: npt.NDArray[np.float32], l1: bool,
                 features: torch.Tensor | None, scores: npt.NDArray[np.float64]) -> None:
        self.recon = recon                    # [n, scored columns]
        self.x = x                            # [n, scored columns], may be a view of the network inputs
        self.l1 = l1
        self.features = features              # on the CPU
        self.scores = scores

    def __call__(self, rows: Rows) -> npt.NDArray[np.float64]:
        elem = _errors(torch.from_numpy(np.asarray(self.recon[rows])),
                       torch.from_numpy(np.ascontiguousarray(self.x[rows])), self.l1)
        per_feature = _per_feature(elem, self.features).double()
        shares = per_feature / per_feature.sum(dim=1, keepdim=True).clamp_min(1e-300)
        out: npt.NDArray[np.float64] = (shares * torch.from_numpy(np.asarray(self.scores[rows])).unsqueeze(-1)).numpy()
        return out


def _errors(recon: torch.Tensor, x: torch.Tensor, l1: bool) -> torch.Tensor:
    """(recon - x)^2, or |recon - x| with `l1`: the same values as the mse / l1 loss without reduction."""
    diff = recon - x
    return diff.abs_() if l1 else diff.square_()


def _row_errors(recon: torch.Tensor, x: torch.Tensor, l1: bool) -> torch.Tensor:
    """Per row of `recon` and `x` ([b, c] each), the mean over the c columns of `_errors`, as float64 [b].

    Summed in float32 (the errors' own precision; a float64 sum took 2.4 times as long at 256 columns): the
    contributions, float64 shares of each score, sum to it all the same.
    """
    return _errors(recon, x, l1).sum(dim=1).double().div_(recon.shape[1])


def _feature_columns(model: FittedModel, device: torch.device) -> torch.Tensor | None:
    """[scored columns]: the feature (schema position) each encoded column of the scored record belongs
    to; None when that is the identity (one column per feature, in order)."""
    pre = model.preprocessor
    if pre.n_columns == len(model.schema.features):
        return None
    owner = torch.empty(pre.n_columns, dtype=torch.long)
    for j, name in enumerate(model.schema.names):
        owner[pre.feature_slices[name]] = j
    return owner.to(device)


def _per_feature(values: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """Per row, the sum of `values` [n, scored columns] over each feature's columns [n, n_features] (column
    by column, in order: a row's sums do not depend on the other rows)."""
    if features is None:
        return values
    out = torch.zeros((len(values), int(features.max()) + 1), dtype=values.dtype, device=values.device)
    return out.index_add_(1, features, values)


def _joined(pieces: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """The batches' arrays as one (the only one itself, without a copy)."""
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class _HybridShares:
    """Contributions of hybrid scores (ScoreResult.contributions) on demand: per row, `_blend` of the
    reconstruction error per feature (from the row's reconstruction and network inputs, as `_ErrorShares`)
    and the squared distance per feature to the mean of the row's neighbours in the memory, the same float64
    operations as when computed for all rows at once."""

    __slots__ = ("bank", "columns", "features", "l1", "neighbours", "recon", "score", "weights", "x", "z")

    def __init__(self, x: npt.NDArray[np.float32], columns: slice, bank: torch.Tensor,
                 neighbours: npt.NDArray[np.int64], recon: npt.NDArray[np.float32], l1: bool,
                 score: npt.NDArray[np.float64], z: dict[str, npt.NDArray[np.float64]],
                 weights: tuple[float, float, float], features: torch.Tensor | None) -> None:
        self.x = x                        # the network inputs; `columns`: the scored record's own
        self.columns = columns
        self.bank = bank                  # on the device the rows were scored on
        self.neighbours = neighbours
        self.recon = recon                # [n, scored columns]
        self.l1 = l1
        self.score = score
        self.z = z
        self.weights = weights
        self.features = features          # on the bank's device

    def __call__(self, rows: Rows) -> npt.NDArray[np.float64]:
        device = self.bank.device
        own = torch.from_numpy(np.ascontiguousarray(self.x[rows, self.columns])).to(device)
        near = self.bank[torch.from_numpy(np.asarray(self.neighbours[rows])).to(device)][:, :, self.columns].mean(dim=1)
        diff = _per_feature((own - near).square(), self.features).double().cpu()
        elem = _errors(torch.from_numpy(np.asarray(self.recon[rows])).to(device), own, self.l1)
        z = {name: torch.from_numpy(np.asarray(values[rows])) for name, values in self.z.items()}
        blended = _blend(torch.from_numpy(np.asarray(self.score[rows])), z, self.weights,
                         _per_feature(elem, self.features).double().cpu(), diff)
        out: npt.NDArray[np.float64] = blended.numpy()
        return out


def _score_parts(
    model: FittedModel, x: npt.NDArray[np.float32], batch_size: int, device: torch.device, reviews: bool = True,
) -> _Parts:
    """Scores, per-feature contributions and reconstructions of network inputs `x`, batch by batch.

    Contributions are left to compute on demand, from the reconstructions and the inputs (`_ErrorShares`), and
    for hybrid scores also from the neighbours found (`_HybridShares`).
    """
    net = model.network if device.type == "cpu" else copy.deepcopy(model.network).to(device)
    memory = model.memory.to(device) if model.memory is not None else None
    scoring, spec, pre = model.scoring, model.spec, model.preprocessor
    n, n_cols = len(x), pre.n_columns
    last = spec.n_inputs - spec.columns          # the scored record's columns start here
    hybrid = scoring.kind == "hybrid"
    l1 = model.loss == "l1"
    scores: list[npt.NDArray[np.float64]] = []
    recons: list[npt.NDArray[np.float32]] = []
    neighbours: list[npt.NDArray[np.int64]] = []        # hybrid: the memory rows nearest to each row
    zs: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in COMPONENTS}     # hybrid
    comps: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in COMPONENTS}
    with torch.inference_mode():
        for start in range(0, max(n, 1), batch_size):
            xb = torch.from_numpy(x[start : start + batch_size]).to(device)
            rb = net(xb)
            own_r = rb[:, last : last + n_cols]
            rec = _row_errors(own_r, xb[:, last : last + n_cols], l1)
            recons.append(own_r.float().cpu().numpy())
            if scoring.kind == "reconstruction":
                score = rec
            elif scoring.kind == "elbo":
                score = rec + spec.beta * net.kl_per_row(xb).double() / spec.n_inputs
            else:
                if memory is None or scoring.normalizer is None:
                    raise ArtifactError("a hybrid model needs a neighbour memory and a normalizer")
                near = memory.query(_memory_view(xb, spec.window))
                values = {"reconstruction": rec, "distance": near.distance.double(), "density": near.density.double()}
                affinity = None
                if reviews and model.incidents is not None and scoring.review_weight > 0:
                    affinity = _review_affinity(values["distance"], nearest_distance(xb, model.incidents), scoring)
                score, z = _combine(values, scoring, affinity)
                neighbours.append(near.rows.cpu().numpy())
                for name in COMPONENTS:
                    comps[name].append(values[name].cpu().numpy())
                    zs[name].append(z[name].cpu().numpy())
            scores.append(score.cpu().numpy())
    recon, all_scores = _joined(recons), _joined(scores)
    contrib: Callable[[Rows], npt.NDArray[np.float64]]
    if hybrid and memory is not None:
        contrib = _HybridShares(x, slice(last, last + n_cols), memory.bank, _joined(neighbours), recon, l1,
                                all_scores, {name: _joined(v) for name, v in zs.items()}, scoring.weights,
                                _feature_columns(model, device))
    else:
        # the scored record's inputs: a view of x for a point-wise model; a copy for windows (whose inputs
        # hold the window's earlier records too)
        own_x = x[:, last : last + n_cols] if last == 0 else np.ascontiguousarray(x[:, last : last + n_cols])
        contrib = _ErrorShares(recon, own_x, l1, _feature_columns(model, torch.device("cpu")), all_scores)
    return _Parts(all_scores, contrib, recon,
                  {name: _joined(v) for name, v in comps.items()} if hybrid else None)


def _review_affinity(distance: torch.Tensor, to_incident: torch.Tensor, scoring: Scoring) -> torch.Tensor:
    """max(0, log(distance to the normal neighbours / distance to the nearest confirmed outlier))."""
    if scoring.normalizer is None:
        raise ValueError("hybrid scoring needs a normalizer")
    eps = scoring.normalizer["distance"][2]
    return torch.log((distance + eps) / (to_incident.double() + eps)).clamp_min(0.0)


def _combine(
    values: Mapping[str, torch.Tensor], scoring: Scoring, affinity: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """softplus of the weighted mean of the log-standardised components (plus review_weight times the
    affinity to confirmed outliers, when given); and each component's z."""
    if scoring.normalizer is None:
        raise ValueError("hybrid scoring needs a normalizer")
    z: dict[str, torch.Tensor] = {}
    total = torch.zeros_like(values["reconstruction"])
    for name, weight in zip(COMPONENTS, scoring.weights, strict=True):
        mean, std, eps = scoring.normalizer[name]
        z[name] = (torch.log(values[name] + eps) - mean) / std
        total = total + weight * z[name]
    mixed = total / sum(scoring.weights)
    if affinity is not None:
        mixed = mixed + scoring.review_weight * affinity
    return torch.nn.functional.softplus(mixed), z


def _blend(
    score: torch.Tensor, z: Mapping[str, torch.Tensor], weights: tuple[float, float, float],
    rec_features: torch.Tensor, near_features: torch.Tensor,
) -> torch.Tensor:
    """Split each score over features: the reconstruction error's per-feature shares and the per-feature
    distance to the neighbours' mean, mixed by how much each part pushed the score up."""
    push_rec = weights[0] * z["reconstruction"].clamp_min(0.0)
    push_near = weights[1] * z["distance"].clamp_min(0.0) + weights[2] * z["density"].clamp_min(0.0)
    total = push_rec + push_near
    share_rec = torch.where(total > 0, push_rec / total.clamp_min(1e-300), torch.ones_like(total))
    rec_share = rec_features / rec_features.sum(dim=1, keepdim=True).clamp_min(1e-300)
    near_share = near_features / near_features.sum(dim=1, keepdim=True).clamp_min(1e-300)
    shares = share_rec.unsqueeze(1) * rec_share + (1.0 - share_rec).unsqueeze(1) * near_share
    return shares * score.unsqueeze(1)


def _normalizer(values: Mapping[str, npt.NDArray[np.float64]]) -> dict[str, tuple[float, float, float]]:
    """Per component: (mean, std, eps) of log(value + eps) over held-out normal rows."""
    out = {}
    for name in COMPONENTS:
        v = np.asarray(values[name], dtype=np.float64)
        scale = float(np.median(v)) or float(np.mean(v))
        eps = 1e-3 * scale + 1e-12
        logs = np.log(v + eps)
        std = float(np.std(logs))
        out[name] = (float(np.mean(logs)), std if std > 1e-9 else 1.0, eps)
    return out


SEQUENCE_CONTEXT_WEIGHT = 0.25   # neighbour distances: the records before a sequence record count this much


def _memory_view(x: torch.Tensor, window: int) -> torch.Tensor:
    """Rows as the neighbour memory sees them: in sequence mode the earlier records of each window are
    scaled by SEQUENCE_CONTEXT_WEIGHT, so one odd record raises its own distance most, not equally the
    distances of the window - 1 records after it. The record's own columns (the last block) are unchanged."""
    if window == 1:
        return x
    n, width = x.shape
    weights = torch.full((window, 1), SEQUENCE_CONTEXT_WEIGHT, dtype=x.dtype, device=x.device)
    weights[-1] = 1.0
    return (x.reshape(n, window, width // window) * weights).reshape(n, width)


def _calibration(
    x: npt.NDArray[np.float32], outcome: TrainOutcome, spec: AutoencoderSpec, schema: Schema,
    preprocessor: Preprocessor, kind: ScoreKind, train: TrainSettings, threshold: ThresholdSettings,
    on_epoch: Callable[[EpochStats], None] | None,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Rows to calibrate on and their reconstruction (or ELBO) scores by a network that never trained on them.

    Always the main run's validation rows. When the window has at most `threshold.fold_max_rows`
    rows, the other rows too, in `threshold.calibration_folds - 1` folds, each scored by a network
    trained without it: a small window then calibrates its threshold on every row instead of a
    fifth of them (a 1 % quantile of 40 held-out scores is their maximum, not a 1 % rate).
    """
    base_kind: ScoreKind = "elbo" if kind == "elbo" else "reconstruction"
    scoring = Scoring(kind=base_kind)
    placeholder = Threshold(0.0, "none", 0.01, 1, 0.01)

    def base(network: DenseAutoencoder, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        probe = FittedModel(schema, preprocessor, spec, train.loss, placeholder, network, {}, None, scoring, None)
        return _score_parts(probe, x[rows], 8192, torch.device("cpu")).scores

    val = outcome.val_index if outcome.val_index is not None else np.arange(len(x))
    rows, values = [val], [base(outcome.model, val)]
    # sequence windows overlap their neighbours in time: random folds would leak, so they keep the
    # newest rows held out (see fit_model)
    if threshold.calibration_folds > 1 and len(x) <= threshold.fold_max_rows and spec.window == 1:
        rest = np.setdiff1d(np.arange(len(x)), val)
        rest = np.random.default_rng(train.seed + 1).permutation(rest)
        for fold in np.array_split(rest, threshold.calibration_folds - 1):
            if len(fold) == 0 or len(fold) >= len(x) - MIN_TRAIN_ROWS:
                continue
            fold = np.sort(fold)
            other = train_autoencoder(x, spec, train, on_epoch, holdout=fold)
            rows.append(fold)
            values.append(base(other.model, fold))
    return np.concatenate(rows), np.concatenate(values)


def _hybrid_fit(
    x: npt.NDArray[np.float32], rows: npt.NDArray[np.intp], base: npt.NDArray[np.float64], model: ModelSettings,
    seed: int, incidents: torch.Tensor | None = None,
) -> tuple[Scoring, NeighborMemory, npt.NDArray[np.float64]]:
    """Build the neighbour memory and normalizer; returns them and the calibration rows' hybrid scores.

    The memory holds (a sample of) every training row; each calibration row is scored leave-one-out,
    as a new normal record would be: against the memory without itself, with the reconstruction
    error `base` of a network that never trained on it.
    """
    view = _memory_view(torch.from_numpy(np.ascontiguousarray(x)), model.window).numpy()
    memory, kept = NeighborMemory.build(view, model.neighbors, model.memory_size, seed, model.neighbor_search)
    if model.window > 1:
        # the held-out rows are the newest ones: score them against a memory of the older rows only, as
        # overlapping windows next to them in time would otherwise be their nearest neighbours
        older = np.setdiff1d(np.arange(len(x)), rows)
        calibration, _ = NeighborMemory.build(view[older], model.neighbors, model.memory_size, seed,
                                              model.neighbor_search)
        with torch.inference_mode():
            near = calibration.query(torch.from_numpy(np.ascontiguousarray(view[rows])))
    else:
        position = np.full(len(x), -1, dtype=np.int64)
        position[kept] = np.arange(len(kept))
        with torch.inference_mode():
            near = memory.query(torch.from_numpy(np.ascontiguousarray(view[rows])),
                                torch.from_numpy(position[rows]))
    values = {"reconstruction": base, "distance": near.distance.double().numpy(),
              "density": near.density.double().numpy()}
    review_weight = model.review_weight if incidents is not None else 0.0
    scoring = Scoring(kind="hybrid", weights=model.weights, neighbors=memory.k, normalizer=_normalizer(values),
                      time_features=model.time_features, window=model.window, review_weight=review_weight,
                      search=model.neighbor_search)
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in values.items()}
    affinity = None
    if incidents is not None and review_weight > 0:
        # the threshold is fitted with the confirmed outliers in place: a normal row that happens to lie
        # nearer to one of them than to its neighbours moves the threshold, not the false-positive rate
        with torch.inference_mode():
            to_incident = nearest_distance(torch.from_numpy(np.ascontiguousarray(x[rows])), incidents)
        affinity = _review_affinity(tensors["distance"], to_incident, scoring)
    score, _ = _combine(tensors, scoring, affinity)
    return scoring, memory, score.numpy()


def _network_inputs(
    frame: pd.DataFrame, preprocessor: Preprocessor, model: ModelSettings
) -> npt.NDArray[np.float32]:
    x = preprocessor.transform(frame)
    if model.time_features:
        x = np.concatenate([x, time_features(frame)], axis=1)
    if model.window > 1:
        x = windows(x, frame, model.window)
    return np.ascontiguousarray(x, dtype=np.float32)


def fit_model(
    frame: pd.DataFrame,
    schema: Schema,
    model: ModelSettings = ModelSettings(),
    train: TrainSettings = TrainSettings(),  # noqa: B008
    threshold: ThresholdSettings = ThresholdSettings(),
    on_epoch: Callable[[EpochStats], None] | None = None,
    trim_fraction: float = 0.0,
    confirmed: pd.DataFrame | None = None,
) -> FittedModel:
    """Fit preprocessing on `frame`, train the autoencoder, fit the threshold on held-out scores.

    With `trim_fraction` > 0 the window is screened first: a model is fitted on all of it, the
    `trim_fraction` highest-scoring rows (the likely incidents of a window no model has screened
    yet) are dropped, and the model is fitted again, from scratch, on the rest. Sequence mode and
    time features read the frame's TS_COLUMN (and KEY_COLUMN when there are several series).
    `confirmed` holds records people confirmed as real outliers: a point-wise hybrid model with
    `model.review_weight` > 0 remembers (the newest MAX_INCIDENTS of) them and scores records that
    resemble them higher (see ModelSettings).
    """
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    if trim_fraction > 0.0:
        # The screen scores by reconstruction error alone: a neighbour memory of a window with an
        # incident holds the incident's own records, which then vouch for each other.
        screen_model = replace(model, score="reconstruction") if model.score == "hybrid" else model
        screen = fit_model(frame, schema, screen_model, train, replace(threshold, calibration_folds=1), on_epoch)
        scores = screen.score(frame).scores
        # Only clear outliers go: beyond q95 + TRIM_SPREADS * (q95 - q50) of the screening model's
        # held-out scores (quantiles that incidents in under 5 % of the window cannot move much), and at
        # most trim_fraction of the window. Trimming ordinary normal rows would cut the top of the
        # held-out distribution too, and the refitted threshold would flag more than target_fpr.
        val = screen.val_scores if screen.val_scores is not None else scores
        q50, q95 = np.quantile(val, [0.5, 0.95])
        far = scores > q95 + TRIM_SPREADS * (q95 - q50)
        keep = ~far | (scores <= np.quantile(scores, 1.0 - trim_fraction))
        fitted = fit_model(frame[keep].reset_index(drop=True), schema, model, train, threshold, on_epoch,
                           confirmed=confirmed)
        fitted.report["trimmed_rows"] = int(len(frame) - int(keep.sum()))
        fitted.report["n_rows_before_trim"] = len(frame)
        return fitted
    if len(frame) < min_rows_for(0):
        raise InsufficientDataError(len(frame), min_rows_for(0))
    bce = train.loss == "bce"
    preprocessor = Preprocessor.fit(frame, schema, unit_range=bce, scaling=model.scaling)
    needed = min_rows_for(preprocessor.n_columns)
    if len(frame) < needed:
        raise InsufficientDataError(len(frame), needed)
    x = _network_inputs(frame, preprocessor, model)
    spec = AutoencoderSpec(
        n_inputs=x.shape[1],
        hidden=tuple(model.hidden),
        latent=model.latent,
        activation=model.activation,
        output="sigmoid" if bce else "linear",
        dropout=model.dropout,
        variant=model.variant,
        arch=model.arch,
        window=model.window,
        noise=model.noise,
        noise_level=model.noise_level,
        sparsity=model.sparsity,
        sparsity_weight=model.sparsity_weight,
        sparsity_target=model.sparsity_target,
        contractive_weight=model.contractive_weight,
        beta=model.beta,
    )
    holdout = None
    if model.window > 1:      # time series: hold out the newest rows, not a random share of overlapping windows
        newest = np.argsort(pd.to_datetime(frame[TS_COLUMN], utc=True).to_numpy(), kind="stable")
        n_val = min(len(x) - MIN_TRAIN_ROWS, max(1, round(len(x) * train.validation_fraction)))
        holdout = np.sort(newest[len(x) - n_val:])
    outcome = train_autoencoder(x, spec, train, on_epoch, holdout=holdout)
    rows, base = _calibration(x, outcome, spec, schema, preprocessor, model.score, train, threshold, on_epoch)
    memory = None
    incidents = _incidents(confirmed, preprocessor, model)
    if model.score == "hybrid":
        scoring, memory, val_scores = _hybrid_fit(x, rows, base, model, train.seed, incidents)
    else:
        scoring = Scoring(kind=model.score, weights=model.weights, neighbors=model.neighbors,
                          time_features=model.time_features, window=model.window)
        val_scores = base
    fitted_threshold = fit_threshold(val_scores, threshold.method, threshold.target_fpr, threshold.k)
    report = _report(outcome, fitted_threshold, model, train, threshold, n_rows=len(frame), val=val_scores)
    if scoring.review_weight == 0:
        incidents = None
    report["scoring"] = {"kind": scoring.kind, "weights": list(scoring.weights),
                         "memory_rows": 0 if memory is None else int(memory.bank.shape[0]),
                         "confirmed_outliers": 0 if incidents is None else int(incidents.shape[0]),
                         "review_weight": scoring.review_weight}
    fitted = FittedModel(schema, preprocessor, spec, train.loss, fitted_threshold, outcome.model, report,
                         _numeric_ranges(frame, schema), scoring, memory, incidents)
    fitted.val_scores = np.asarray(val_scores, dtype=np.float64)
    return fitted


def _incidents(
    confirmed: pd.DataFrame | None, preprocessor: Preprocessor, model: ModelSettings
) -> torch.Tensor | None:
    """Network inputs of the newest MAX_INCIDENTS confirmed outliers, or None when they are not used:
    none given, review_weight 0, a score other than hybrid, or sequence mode (a confirmed record's
    window is not at hand)."""
    if confirmed is None or len(confirmed) == 0 or model.review_weight == 0:
        return None
    if model.score != "hybrid" or model.window > 1:
        return None
    rows = confirmed.iloc[-MAX_INCIDENTS:].reset_index(drop=True)
    return torch.from_numpy(_network_inputs(rows, preprocessor, model))


def _numeric_ranges(frame: pd.DataFrame, schema: Schema) -> dict[str, tuple[float, float]]:
    """Training minimum and maximum of each numeric feature (for out-of-range notes at scoring)."""
    ranges = {}
    for feature in schema.features:
        if feature.kind != "numeric":
            continue
        values = pd.to_numeric(frame[feature.name], errors="coerce").to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            ranges[feature.name] = (float(values.min()), float(values.max()))
    return ranges


def _report(
    outcome: TrainOutcome,
    threshold: Threshold,
    model: ModelSettings,
    train: TrainSettings,
    threshold_settings: ThresholdSettings,
    n_rows: int,
    val: npt.NDArray[np.float64],
) -> dict[str, Any]:
    last = outcome.history[-1]
    report = {
        "n_rows": n_rows,
        "n_train": outcome.n_train,
        "n_val": outcome.n_val,
        "best_epoch": outcome.best_epoch,
        "epochs_run": len(outcome.history),
        "stopped_early": outcome.stopped_early,
        "stop_reason": outcome.stop_reason,
        "device": outcome.device,
        "seconds": outcome.seconds,
        "train_loss": last.train_loss,
        "val_loss": last.val_loss,
        "best_val_loss": outcome.history[outcome.best_epoch - 1].val_loss,
        "val_scores": {
            "mean": float(np.mean(val)),
            "p50": float(np.quantile(val, 0.5)),
            "p99": float(np.quantile(val, 0.99)),
            "max": float(np.max(val)),
        },
        "threshold": threshold.to_dict(),
        "history": [asdict(stats) for stats in outcome.history],
        "settings": {
            "model": asdict(model),
            "train": train.to_dict(),
            "threshold": asdict(threshold_settings),
        },
    }
    jsonable: dict[str, Any] = to_jsonable(report)
    return jsonable
