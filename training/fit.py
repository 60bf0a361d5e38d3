"""Fit a complete model (preprocessing, autoencoder, threshold) on a window of records: `fit_model` and its
steps (the first-window trim, out-of-fold calibration, the hybrid score's memory and normalizer, the report).

The settings it takes are in training.settings, the model it returns in training.fitted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from training._jsonable import to_jsonable
from training.choices import ScoreKind
from training.errors import InsufficientDataError
from training.fitted import FittedModel, network_inputs, score_parts
from training.hybrid import combine, fit_normalizer, memory_view, review_affinity
from training.loop import MIN_TRAIN_ROWS, EpochStats, TrainOutcome, TrainSettings, train_autoencoder
from training.memory import NeighborMemory, nearest_distance
from training.model import AutoencoderSpec, DenseAutoencoder
from training.preprocess import Preprocessor
from training.schema import Schema
from training.sequence import KEY_COLUMN, TS_COLUMN
from training.settings import WIDE, WIDE_ROWS, ModelSettings, Scoring, ThresholdSettings, min_rows_for, wide
from training.thresholds import Threshold, fit_threshold

__all__ = ["KEY_COLUMN", "MAX_INCIDENTS", "TRIM_SPREADS", "TS_COLUMN", "fit_model", "recalibrate"]

logger = logging.getLogger(__name__)

TRIM_SPREADS = 2.0         # first-window trim: how far beyond the held-out 95th percentile a row must score
TAIL_SHARE = 0.5          # trimmed rows beyond the cut that may rejoin calibration, as a share of target_fpr
MAX_INCIDENTS = 5000       # confirmed outliers a hybrid model remembers (the newest ones when there are more)


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
        return score_parts(probe, x[rows], 8192, torch.device("cpu")).scores

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
    view = memory_view(torch.from_numpy(np.ascontiguousarray(x)), model.window).numpy()
    memory, kept = NeighborMemory.build(view, model.neighbors, model.memory_size, seed, model.neighbor_search)
    if model.window > 1:
        # the held-out rows are the newest ones: score them against a memory of the older rows only, as
        # overlapping windows next to them in time would otherwise be their nearest neighbours
        older = np.setdiff1d(np.arange(len(x)), rows)
        calibration, _ = NeighborMemory.build(view[older], model.neighbors, model.memory_size, seed,
                                              model.neighbor_search)
        own: NeighborMemory = calibration
        exclude = None
    else:
        position = np.full(len(x), -1, dtype=np.int64)
        position[kept] = np.arange(len(kept))
        own, exclude = memory, torch.from_numpy(position[rows])
    queries = torch.from_numpy(np.ascontiguousarray(view[rows]))
    wide_rows, wide_k = _wide_scale(model, memory.bank.shape[0], own.bank.shape[0])
    with torch.inference_mode():
        near = own.query(queries, exclude)
        values = {"reconstruction": base, "distance": near.distance.double().numpy(),
                  "density": near.density.double().numpy()}
        if wide_k > 0:
            values[WIDE] = own.wide_distance(queries, wide_rows, wide_k, exclude).double().numpy()
    review_weight = model.review_weight if incidents is not None else 0.0
    scoring = Scoring(kind="hybrid", weights=model.weights, neighbors=memory.k, normalizer=fit_normalizer(values),
                      time_features=model.time_features, window=model.window, review_weight=review_weight,
                      search=model.neighbor_search, wide_rows=wide_rows, wide_k=wide_k)
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in values.items()}
    affinity = None
    if incidents is not None and review_weight > 0:
        # the threshold is fitted with the confirmed outliers in place: a normal row that happens to lie
        # nearer to one of them than to its neighbours moves the threshold, not the false-positive rate
        with torch.inference_mode():
            to_incident = nearest_distance(torch.from_numpy(np.ascontiguousarray(x[rows])), incidents)
        affinity = review_affinity(tensors["distance"], to_incident, scoring)
    score, _ = combine(tensors, scoring, affinity)
    return scoring, memory, score.numpy()


def _wide_scale(model: ModelSettings, memory_rows: int, calibration_rows: int) -> tuple[int, int]:
    """(rows, k) of the wide-scale distance: k is wide_share of the rows it is measured among (WIDE_ROWS of
    the memory, or all of a smaller one), at least the local `neighbors`; (0, 0) when off or when the memory
    (or a sequence model's memory of its older rows, which calibrates it) is too small for a wider scale."""
    rows = min(WIDE_ROWS, memory_rows)
    k = max(model.neighbors, round(model.wide_share * rows))
    if model.wide_share <= 0 or k + 1 >= min(rows, calibration_rows):
        return 0, 0
    return rows, k


def fit_model(
    frame: pd.DataFrame,
    schema: Schema,
    model: ModelSettings = ModelSettings(),  # noqa: B008
    train: TrainSettings = TrainSettings(),  # noqa: B008
    threshold: ThresholdSettings = ThresholdSettings(),  # noqa: B008
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
        screened = screen.score(frame)
        scores = screened.scores
        # Only clear outliers go: beyond q95 + TRIM_SPREADS * (q95 - q50) of the screening model's
        # held-out scores (quantiles that incidents in under 5 % of the window cannot move much), and at
        # most trim_fraction of the window. Trimming ordinary normal rows would cut the top of the
        # held-out distribution too, and the refitted threshold would flag more than target_fpr.
        val = screen.val_scores if screen.val_scores is not None else scores
        numbers = [j for j, f in enumerate(schema.features) if f.kind != "categorical"]
        if len(numbers) < len(schema.features) and numbers:
            # A rare category is not evidence of an incident: an autoencoder reconstructs a row's rarer level
            # badly however often it occurs, and trimming those rows took rare-but-normal levels out of the
            # model (a demo's 3xx rows, then marked "never seen"). With categorical features the screen
            # judges the numeric and boolean features' share of each row's error, on every row.
            scores = screened.contributions[:, numbers].sum(axis=1)
            val = scores
        far = scores > _far_cut(val)
        keep = ~far | (scores <= np.quantile(scores, 1.0 - trim_fraction))
        fitted = fit_model(frame[keep].reset_index(drop=True), schema, model, train, threshold, on_epoch,
                           confirmed=confirmed)
        fitted.report["trimmed_rows"] = int(len(frame) - int(keep.sum()))
        fitted.report["n_rows_before_trim"] = len(frame)
        if not keep.all():
            recalibrate(fitted, frame[~keep].reset_index(drop=True), threshold, len(frame))
        return fitted
    if len(frame) < min_rows_for(0):
        raise InsufficientDataError(len(frame), min_rows_for(0))
    bce = train.loss == "bce"
    preprocessor = Preprocessor.fit(frame, schema, unit_range=bce, scaling=model.scaling, per_key=model.per_key)
    needed = min_rows_for(preprocessor.n_columns)
    if len(frame) < needed:
        raise InsufficientDataError(len(frame), needed)
    narrow = wide(len(frame), preprocessor.n_columns) and model.score == "hybrid" and model.weights[0] > 0
    if narrow:
        # fewer rows than the columns need to learn how they relate (hepatitis: 34 rows, 19 columns;
        # internetads: 799 rows, 1,555 columns): the network still trains (the memory is searched in its
        # input space), but the score is the neighbour memory's distance and density alone
        model = replace(model, weights=(0.0, model.weights[1], model.weights[2]))
    x = network_inputs(frame, preprocessor, model.time_features, model.window)
    spec = AutoencoderSpec.of(model.network, n_inputs=x.shape[1], output="sigmoid" if bce else "linear")
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
    report["wide"] = narrow
    report["wide_scale"] = {"k": scoring.wide_k, "rows": scoring.wide_rows, "used": scoring.has_wide}
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
    return torch.from_numpy(network_inputs(rows, preprocessor, model.time_features, model.window))


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


def _far_cut(held_out: npt.NDArray[np.float64]) -> float:
    """Where a clear outlier starts: q95 + TRIM_SPREADS * (q95 - q50) of held-out scores."""
    q50, q95 = np.quantile(held_out, [0.5, 0.95])
    return float(q95 + TRIM_SPREADS * (q95 - q50))


def recalibrate(fitted: FittedModel, trimmed: pd.DataFrame, threshold: ThresholdSettings, n_window: int) -> None:
    """Fit `fitted`'s threshold again with the rows left out of its window (`trimmed`, of the `n_window` rows
    the window held with them) that belong to the normal tail: the first-window trim's, or a later window's
    records that earlier models flagged (the daemon's trainer). A point-wise model's.

    The screen's cut removes incidents, and with them the top of a heavy or lumpy normal tail (a rare
    category's rows, a daily peak). Calibrating on the kept rows alone then sets the threshold below
    their true 1 - target_fpr quantile, and fresh normal data crosses it 1.5-2.5 times as often as
    promised. The refitted model never trained on the trimmed rows, so its scores of them are held-out
    scores like the calibration rows'. Those within the clear-outlier cut of its own held-out scores rejoin
    the calibration; of those beyond it, the lowest rejoin too, up to TAIL_SHARE * target_fpr of the window
    (a clean window's far tail: without them the threshold still sat low, 1.2-1.6 % realised at 1 %); the
    rest (incidents) stay out. A window with more incidents than that calibrates as if they were a part of
    its promised rate: its threshold errs high, by at most TAIL_SHARE * target_fpr. The calibration sample
    holds a share of the kept rows (the validation split of a large window), and the rejoining rows are
    thinned to that share, evenly over their scores.
    """
    val = fitted.val_scores
    if val is None or len(trimmed) == 0:
        return
    scores = np.sort(np.asarray(fitted.score(trimmed).scores, dtype=np.float64))
    within = int(np.searchsorted(scores, _far_cut(val), side="right"))
    beyond = min(len(scores) - within, int(TAIL_SHARE * threshold.target_fpr * n_window))
    rejoin = scores[: within + beyond]
    share = min(1.0, len(val) / max(1, n_window - len(trimmed)))
    count = round(len(rejoin) * share)
    fitted.report["readmitted_rows"] = count
    if count == 0:
        return
    rejoin = rejoin[np.linspace(0, len(rejoin) - 1, count).round().astype(np.intp)]
    calibration = np.concatenate([val, rejoin])
    fitted.threshold = fit_threshold(calibration, threshold.method, threshold.target_fpr, threshold.k)
    fitted.val_scores = calibration
    fitted.report["threshold"] = fitted.threshold.to_dict()


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
