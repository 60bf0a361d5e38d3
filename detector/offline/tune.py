"""`vigil tune`: compare model shapes on a detector's training window and write the winner as config.

Every candidate (hidden layers, latent size, autoencoder variant where the config has one) is fitted
on the older 80 % of the window and judged on its newest 20 %: by mean reconstruction error,
and, once people have reviewed outliers, by how well its scores put confirmed anomalies above
dismissed outliers and held-out normal records (average precision, ROC AUC).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args, get_origin

import numpy as np
import numpy.typing as npt
import pandas as pd

from detector.config import Config, DetectorConfig, ModelConfig
from detector.errors import NoRecordsError, TooFewRecordsError, UnknownDetectorError
from detector.frames import needs_context, records_frame
from detector.store.db import open_repository
from detector.store.repository import Repository
from detector.store.types import PendingRecord
from detector.trainer import settings_for
from training.errors import TrainingError
from training.fit import fit_model
from training.fitted import FittedModel
from training.loop import row_errors

__all__ = [
    "Candidate",
    "CandidateResult",
    "Grid",
    "TuningResult",
    "average_precision",
    "model_snippet",
    "roc_auc",
    "run_tuning",
    "variant_choices",
]

logger = logging.getLogger(__name__)

MAX_CANDIDATES = 40
HOLDOUT_FRACTION = 0.2


def variant_choices() -> tuple[str, ...]:
    """The values `ModelConfig.variant` allows, from its Literal annotation; () when there is no such field."""
    field = ModelConfig.model_fields.get("variant")
    if field is None:
        return ()

    def literals(annotation: Any) -> list[str]:
        if get_origin(annotation) is Literal:
            return [a for a in get_args(annotation) if isinstance(a, str)]
        return [v for arg in get_args(annotation) for v in literals(arg)]

    return tuple(dict.fromkeys(literals(field.annotation)))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model shape; `variant` is None when the config has no variants."""

    hidden: tuple[int, ...]
    latent: int
    variant: str | None = None

    @property
    def label(self) -> str:
        shape = "-".join(map(str, self.hidden)) or "none"
        return f"hidden {shape}, latent {self.latent}" + (f", {self.variant}" if self.variant else "")


def hidden_for(depth: int, base: int, latent: int) -> tuple[int, ...]:
    """`depth` layer widths halving from `base`, none narrower than the code."""
    return tuple(max(base >> i, latent) for i in range(depth))


def _ints(text: str, option: str, low: int, high: int) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not values or any(not low <= v <= high for v in values):
        raise ValueError(f"{option} must be integers in [{low}, {high}], got {text!r}")
    return list(dict.fromkeys(values))


@dataclass(frozen=True, slots=True)
class Grid:
    """The candidates: every depth x latent size at the configured variant, every variant at the configured
    shape, and the configured model itself (first)."""

    candidates: tuple[Candidate, ...]

    @classmethod
    def parse(cls, config: Config, detector: str, depths: str, latents: str, variants: str | None) -> Grid:
        if detector not in config.detectors:
            raise UnknownDetectorError(detector, list(config.detectors))
        model = config.detectors[detector].model
        choices = variant_choices()
        current_variant: str | None = getattr(model, "variant", None) if choices else None
        wanted: Sequence[str] = choices
        if variants is not None:
            wanted = [v.strip() for v in variants.split(",") if v.strip()]
            unknown = [v for v in wanted if v not in choices]
            if unknown:
                raise ValueError(f"--variants: {', '.join(unknown)} not among the known variants "
                                 f"({', '.join(choices) or 'none: this version has no variants'})")
        base = max(model.hidden) if model.hidden else 32
        current = Candidate(tuple(model.hidden), model.latent, current_variant)
        found = [current]
        for depth in _ints(depths, "--depths", 1, 8):
            for latent in _ints(latents, "--latents", 1, 1024):
                found.append(Candidate(hidden_for(depth, base, latent), latent, current_variant))
        found += [Candidate(current.hidden, current.latent, v) for v in wanted]
        unique = tuple(dict.fromkeys(found))
        if len(unique) > MAX_CANDIDATES:
            raise ValueError(f"the grid has {len(unique)} candidates; at most {MAX_CANDIDATES}")
        return cls(unique)


@dataclass(frozen=True, slots=True)
class CandidateResult:
    candidate: Candidate
    holdout_error: float             # mean reconstruction error of the held-out rows (lower is better)
    val_loss: float
    epochs_run: int
    seconds: float
    n_parameters: int
    average_precision: float | None = None   # confirmed vs dismissed and held-out normal records
    roc_auc: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class TuningResult:
    detector: str
    n_fit: int
    n_holdout: int
    n_confirmed: int
    n_dismissed: int
    ranked_by: str                   # "reviews" or "holdout error"
    ranked: list[CandidateResult]
    current: Candidate               # the detector's configured model shape


def roc_auc(positive: npt.NDArray[np.float64], negative: npt.NDArray[np.float64]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    scores = np.concatenate([positive, negative])
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(positive: npt.NDArray[np.float64], negative: npt.NDArray[np.float64]) -> float:
    """Mean precision at the rank of each positive, scores ranked from highest (ties: positives last)."""
    scores = np.concatenate([positive, negative])
    labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.lexsort((labels, -scores))
    hits = np.cumsum(labels[order])
    precision = hits / np.arange(1, len(scores) + 1)
    return float(precision[labels[order] == 1].mean())


def _window(repo: Repository, name: str, det: DetectorConfig, max_rows: int) -> pd.DataFrame:
    """The newest trainable records of the detector's training window, as the trainer reads them."""
    latest = repo.latest_ts(name)
    if latest is None:
        raise NoRecordsError(f"detector {name!r} has no records yet")
    since = latest - timedelta(seconds=det.training.window)
    records = repo.training_window(name, since, min(det.training.max_records, max_rows),
                                   det.review.states_into_training)
    return records_frame(records, det.feature_schema, context=needs_context(det))


def _candidate_config(det: DetectorConfig, candidate: Candidate, epochs: int) -> DetectorConfig:
    updates: dict[str, Any] = {"hidden": candidate.hidden, "latent": candidate.latent,
                               "epochs": min(epochs, det.model.epochs)}
    if candidate.variant is not None:
        updates["variant"] = candidate.variant
    model = ModelConfig.model_validate({**det.model.model_dump(), **updates})
    return det.model_copy(update={"model": model})


def _evaluate(fitted: FittedModel, fit_rows: pd.DataFrame, holdout: pd.DataFrame,
              reviewed: tuple[pd.DataFrame, pd.DataFrame] | None) -> tuple[float, float | None, float | None]:
    """Mean held-out reconstruction error, and (AP, AUC) of confirmed against dismissed + held-out records."""
    inputs = fitted.inputs(holdout, history=fit_rows if fitted.needs_history else None)
    errors, _, _ = row_errors(fitted.network, inputs, fitted.loss)
    if reviewed is None:
        return float(np.mean(errors)), None, None
    confirmed, dismissed = reviewed
    positive = fitted.score(confirmed).scores
    negative = np.concatenate([fitted.score(dismissed).scores, fitted.score(holdout).scores])
    return float(np.mean(errors)), average_precision(positive, negative), roc_auc(positive, negative)


def _fit_candidate(fit_rows: pd.DataFrame, holdout: pd.DataFrame, det: DetectorConfig, candidate: Candidate,
                   epochs: int, reviewed: tuple[pd.DataFrame, pd.DataFrame] | None) -> CandidateResult:
    started = time.perf_counter()
    try:
        model_settings, train_settings, threshold_settings = settings_for(_candidate_config(det, candidate, epochs))
        fitted = fit_model(fit_rows, det.feature_schema, model_settings, train_settings, threshold_settings)
        error, ap, auc = _evaluate(fitted, fit_rows, holdout, reviewed)
    except (TrainingError, ValueError, KeyError, RuntimeError) as exc:
        logger.warning("tuning candidate failed", extra={"candidate": candidate.label, "error": str(exc)})
        return CandidateResult(candidate, math.inf, math.inf, 0, time.perf_counter() - started, 0,
                               error=f"{exc.__class__.__name__}: {exc}")
    n_parameters = sum(p.numel() for p in fitted.network.parameters())
    report = fitted.report
    return CandidateResult(candidate, error, float(report["val_loss"]), int(report["epochs_run"]),
                           time.perf_counter() - started, n_parameters, ap, auc)


def _reviewed(repo: Repository, name: str, det: DetectorConfig) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    verdicts = repo.reviews.reviewed_fields(name)
    now = datetime.now(UTC)
    frames = []
    for verdict in ("confirmed", "dismissed"):
        records = [PendingRecord(i, now, key, f) for i, (v, f, key) in enumerate(verdicts) if v == verdict]
        frames.append(records_frame(records, det.feature_schema, context=True))
    return (frames[0], frames[1]) if len(frames[0]) else None


def run_tuning(config: Config, detector: str, grid: Grid, epochs: int = 30, max_rows: int = 20_000,
               on_candidate: Callable[[CandidateResult], None] | None = None) -> TuningResult:
    """Fit every candidate of `grid` on the detector's window (held-out rows set aside) and rank them."""
    if detector not in config.detectors:
        raise UnknownDetectorError(detector, list(config.detectors))
    det = config.detectors[detector]
    repo = open_repository(config.store_url)
    try:
        frame = _window(repo, detector, det, max_rows)
        # reviewed outliers are stored without their neighbours in time: a sequence model cannot score them
        reviewed = None if det.model.window > 1 or det.model.time_features else _reviewed(repo, detector, det)
    finally:
        repo.dispose()
    if len(frame) < det.training.min_records:
        raise TooFewRecordsError(f"the window of {detector!r} holds {len(frame)} records; tuning needs min_records="
                         f"{det.training.min_records}")
    n_holdout = max(1, round(len(frame) * HOLDOUT_FRACTION))     # the newest records, as new data will be
    holdout = frame.iloc[len(frame) - n_holdout:].reset_index(drop=True)
    fit_rows = frame.iloc[: len(frame) - n_holdout].reset_index(drop=True)
    results = []
    for candidate in grid.candidates:
        result = _fit_candidate(fit_rows, holdout, det, candidate, epochs, reviewed)
        results.append(result)
        if on_candidate is not None:
            on_candidate(result)
    by_reviews = reviewed is not None
    results.sort(key=lambda r: (r.error is not None, -(r.average_precision or 0.0) if by_reviews else 0.0,
                                r.holdout_error))
    n_confirmed, n_dismissed = (len(reviewed[0]), len(reviewed[1])) if reviewed else (0, 0)
    return TuningResult(detector, len(fit_rows), len(holdout), n_confirmed, n_dismissed,
                        "reviews" if by_reviews else "holdout error", results, grid.candidates[0])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def model_snippet(config: Config, detector: str, winner: Candidate) -> str:
    """A `[detectors.NAME.model]` table: the detector's configured model keys with the winner's shape.

    It replaces the detector's model table (or merges into it key by key) and passes `vigil config check`.
    """
    model = config.detectors[detector].model
    values: dict[str, Any] = model.model_dump(exclude_unset=True)
    values.update({"hidden": list(winner.hidden), "latent": winner.latent})
    if winner.variant is not None:
        values["variant"] = winner.variant
    lines = [f"# vigil tune {detector}: the winning model shape ({winner.label})",
             f"[detectors.{detector}.model]"]
    lines += [f"{key} = {_toml(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"
