"""Fit a complete model (preprocessing, autoencoder, threshold) on a window of records, and score with it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
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
    EpochStats,
    LossName,
    TrainOutcome,
    TrainSettings,
    row_errors,
    train_autoencoder,
)
from training.model import Activation, AutoencoderSpec, DenseAutoencoder
from training.preprocess import Preprocessor
from training.schema import Schema
from training.thresholds import Threshold, fit_quantile_threshold

__all__ = [
    "FittedModel",
    "ModelSettings",
    "ScoreResult",
    "ThresholdSettings",
    "fit_model",
    "min_rows_for",
]

logger = logging.getLogger(__name__)

OUT_OF_RANGE_SPANS = 0.5   # a value beyond the training range by more than half its width is out of range


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Autoencoder shape; n_inputs comes from the preprocessor, output is sigmoid iff the loss is bce."""

    hidden: tuple[int, ...] = (64, 32)
    latent: int = 8
    activation: Activation = "relu"
    dropout: float = 0.0


@dataclass(frozen=True, slots=True)
class ThresholdSettings:
    """Threshold policy: the (1 - target_fpr) quantile of held-out scores."""

    method: Literal["quantile"] = "quantile"
    target_fpr: float = 0.01

    def __post_init__(self) -> None:
        if self.method != "quantile":
            raise ValueError(f"ThresholdSettings.method must be 'quantile', got {self.method!r}")
        if not 0.0 < self.target_fpr < 0.5:
            raise ValueError(f"ThresholdSettings.target_fpr must be in (0, 0.5), got {self.target_fpr!r}")


def min_rows_for(n_columns: int) -> int:
    """Fewest training rows accepted for a model with `n_columns` encoded columns."""
    return max(32, 2 * n_columns)


@dataclass(frozen=True)
class ScoreResult:
    """Scores of n records and their explanation.

    scores [n] (higher = more anomalous), is_outlier [n] (scores > threshold), contributions
    [n, n_features] (each row sums to its score), expected (decoded reconstruction, one column per
    feature), unseen [n, n_features] (categorical value never seen in training).
    """

    scores: npt.NDArray[np.float64]
    threshold: float
    is_outlier: npt.NDArray[np.bool_]
    contributions: npt.NDArray[np.float64]
    expected: pd.DataFrame
    unseen: npt.NDArray[np.bool_]
    feature_names: list[str]
    out_of_range: npt.NDArray[np.bool_] | None = None

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
        row = self.contributions[i]
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
    """A trained model: schema, preprocessor, network (on CPU, eval mode), threshold and training report."""

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
    ) -> None:
        self.schema = schema
        self.preprocessor = preprocessor
        self.spec = spec
        self.loss: LossName = loss
        self.threshold = threshold
        self.network = network.cpu().eval()
        self.report = report
        self.ranges: dict[str, tuple[float, float]] = dict(ranges or {})
        # held-out normal scores of the run that fitted the threshold (kept in memory, not in the artifact)
        self.val_scores: npt.NDArray[np.float64] | None = None

    def score(
        self, frame: pd.DataFrame, batch_size: int = 8192, device: str | torch.device = "cpu"
    ) -> ScoreResult:
        """Score every row of `frame` (columns must include the schema's features; KeyError otherwise).

        A score that is NaN (only possible for inputs beyond float32 range) is reported as +inf, so the
        record counts as an outlier instead of silently passing.
        """
        x = self.preprocessor.transform(frame)
        scores, recon, elem = row_errors(self.network, x, self.loss, batch_size, device)
        scores = np.where(np.isnan(scores), np.inf, scores)
        n_columns = self.preprocessor.n_columns
        contributions = np.empty((len(x), len(self.schema.features)), dtype=np.float64)
        for j, name in enumerate(self.schema.names):
            columns = elem[:, self.preprocessor.feature_slices[name]]
            contributions[:, j] = columns.sum(axis=1, dtype=np.float64) / n_columns
        return ScoreResult(
            out_of_range=self.out_of_range(frame),
            scores=scores,
            threshold=self.threshold.value,
            is_outlier=scores > self.threshold.value,
            contributions=contributions,
            expected=self.preprocessor.decode(recon),
            unseen=self.preprocessor.unseen_mask(frame),
            feature_names=self.schema.names,
        )

    def encode(self, frame: pd.DataFrame, batch_size: int = 8192) -> npt.NDArray[np.float32]:
        """Latent codes [n, latent] of the rows of `frame` (the code's mean for a variational model)."""
        x = self.preprocessor.transform(frame)
        codes = np.empty((len(x), self.spec.latent), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch = torch.from_numpy(x[start : start + batch_size])
                codes[start : start + batch_size] = self.network.encode(batch).numpy()
        return codes

    def out_of_range(self, frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
        """[n, n_features]: numeric values more than OUT_OF_RANGE_SPANS training ranges beyond its edges."""
        mask = np.zeros((len(frame), len(self.schema.features)), dtype=bool)
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
        """Safetensors bytes of the network weights, and JSON-able metadata for everything else."""
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
        }
        return network_to_bytes(self.network), meta

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
        loss = meta["loss"]
        if loss not in get_args(LossName):
            raise ArtifactError(f"unknown loss {loss!r}")
        if not isinstance(meta["report"], Mapping):
            raise ArtifactError("'report' must be a mapping")
        if preprocessor.schema != schema:
            raise ArtifactError("the preprocessor was fitted for a different schema than 'schema'")
        if spec.n_inputs != preprocessor.n_columns:
            raise ArtifactError(
                f"spec.n_inputs is {spec.n_inputs} but the preprocessor "
                f"makes {preprocessor.n_columns} columns"
            )
        if (loss == "bce") != (spec.output == "sigmoid"):
            raise ArtifactError(f"loss {loss!r} does not fit a spec with output {spec.output!r}")
        network = network_from_bytes(weights, spec)
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in dict(meta.get("ranges") or {}).items()}
        return cls(schema, preprocessor, spec, loss, threshold, network, dict(meta["report"]), ranges)


def fit_model(
    frame: pd.DataFrame,
    schema: Schema,
    model: ModelSettings = ModelSettings(),
    train: TrainSettings = TrainSettings(),  # noqa: B008
    threshold: ThresholdSettings = ThresholdSettings(),
    on_epoch: Callable[[EpochStats], None] | None = None,
    trim_fraction: float = 0.0,
) -> FittedModel:
    """Fit preprocessing on `frame`, train the autoencoder, fit the threshold on validation scores.

    With `trim_fraction` > 0 the window is screened first: a model is fitted on all of it, the
    `trim_fraction` highest-scoring rows (the likely incidents of a window no model has screened
    yet) are dropped, and the model is fitted again, from scratch, on the rest.
    """
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    if trim_fraction > 0.0:
        screen = fit_model(frame, schema, model, train, threshold, on_epoch)
        scores = screen.score(frame).scores
        keep = scores <= np.quantile(scores, 1.0 - trim_fraction)
        fitted = fit_model(frame[keep].reset_index(drop=True), schema, model, train, threshold, on_epoch)
        fitted.report["trimmed_rows"] = int(len(frame) - int(keep.sum()))
        fitted.report["n_rows_before_trim"] = len(frame)
        return fitted
    if len(frame) < min_rows_for(0):
        raise InsufficientDataError(len(frame), min_rows_for(0))
    bce = train.loss == "bce"
    preprocessor = Preprocessor.fit(frame, schema, unit_range=bce)
    needed = min_rows_for(preprocessor.n_columns)
    if len(frame) < needed:
        raise InsufficientDataError(len(frame), needed)
    spec = AutoencoderSpec(
        n_inputs=preprocessor.n_columns,
        hidden=tuple(model.hidden),
        latent=model.latent,
        activation=model.activation,
        output="sigmoid" if bce else "linear",
        dropout=model.dropout,
    )
    outcome = train_autoencoder(preprocessor.transform(frame), spec, train, on_epoch)
    fitted_threshold = fit_quantile_threshold(outcome.val_errors, threshold.target_fpr)
    report = _report(outcome, fitted_threshold, model, train, threshold, n_rows=len(frame))
    fitted = FittedModel(schema, preprocessor, spec, train.loss, fitted_threshold, outcome.model, report,
                         _numeric_ranges(frame, schema))
    fitted.val_scores = np.asarray(outcome.val_errors, dtype=np.float64)
    return fitted


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
) -> dict[str, Any]:
    last = outcome.history[-1]
    val = outcome.val_errors
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
