"""Scorers of the quality benchmark: Vigil configurations, built as the daemon builds them, and baselines."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

import training.fit as fit_module
from detector.config import DetectorConfig
from detector.trainer import settings_for

__all__ = [
    "BASELINES",
    "Run",
    "available_baselines",
    "run_baseline",
    "run_vigil",
    "sequence_window",
    "vigil_detector",
    "with_sequence_columns",
    "zscore_scores",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

SECTIONS = ("model", "threshold", "training")
TARGET_FPR = 0.01       # the baselines' target false-positive rate (Vigil's comes from its config)


@dataclass
class Run:
    """One method on one split: test scores (higher = more anomalous), flags at its threshold, timings."""

    scores: FloatArray
    flags: BoolArray
    target_fpr: float
    fit_s: float
    score_s: float
    info: dict[str, Any] = field(default_factory=dict)


# --- Vigil ---------------------------------------------------------------------------------------------

def vigil_detector(overrides: Mapping[str, Mapping[str, Any]], features: list[str], seed: int) -> DetectorConfig:
    """A detector config (http source, numeric `features`) with `overrides` of its model, threshold and
    training sections, validated as config.toml is. model.seed is `seed` unless the overrides set it."""
    unknown = sorted(set(overrides) - set(SECTIONS))
    if unknown:
        raise ValueError(f"a benchmark configuration may override {SECTIONS} only, not {unknown}")
    sections: dict[str, Any] = {name: dict(values) for name, values in overrides.items()}
    sections.setdefault("model", {}).setdefault("seed", seed)
    return DetectorConfig.model_validate(
        {"source": {"type": "http"}, "features": dict.fromkeys(features, "numeric"), **sections})


def sequence_window(det: DetectorConfig) -> int:
    """The model's window (1 = each record alone; > 1 = sequence mode, once ModelConfig has `window`)."""
    return int(getattr(det.model, "window", 1))


def with_sequence_columns(frame: pd.DataFrame, ts: pd.Series[Any], keys: pd.Series[Any]) -> pd.DataFrame:
    """`frame` plus the timestamp and key columns sequence mode reads, when the training library has them."""
    library = vars(fit_module)
    if "TS_COLUMN" not in library:
        return frame
    return frame.assign(**{library["TS_COLUMN"]: ts.to_numpy(), library["KEY_COLUMN"]: keys.to_numpy()})


def run_vigil(det: DetectorConfig, fit_frame: pd.DataFrame, score_frame: pd.DataFrame) -> Run:
    """Fit as the daemon fits a model on a screened window (settings_for; no first-window trim: the
    protocol's training rows are all normal, as in a window earlier models already screened); score."""
    if sequence_window(det) > 1 and not hasattr(fit_module, "TS_COLUMN"):
        raise RuntimeError("this configuration sets model.window > 1, but training.fit has no TS_COLUMN "
                           "(sequence mode) yet")
    model, train, threshold = settings_for(det)
    started = time.perf_counter()
    fitted = fit_module.fit_model(fit_frame, det.feature_schema, model, train, threshold,
                                  trim_fraction=0.0)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    result = fitted.score(score_frame)
    score_s = time.perf_counter() - started
    if len(result.scores) != len(score_frame):
        raise RuntimeError(f"{len(result.scores)} scores for {len(score_frame)} rows")
    report = fitted.report
    info = {"device": report["device"], "epochs": report["epochs_run"], "n_fit": len(fit_frame),
            "threshold": fitted.threshold.value}
    return Run(np.asarray(result.scores, dtype=np.float64), np.asarray(result.is_outlier, dtype=bool),
               fitted.threshold.target_fpr, fit_s, score_s, info)


# --- baselines -----------------------------------------------------------------------------------------

class Baseline(Protocol):
    def fit(self, x: FloatArray) -> None: ...

    def score(self, x: FloatArray) -> FloatArray: ...


class _KnnDistance:
    """Distance to the k-th nearest fitted row (k = 5)."""

    def __init__(self, seed: int, k: int = 5) -> None:
        from sklearn.neighbors import NearestNeighbors

        self._k = k
        self._model = NearestNeighbors(n_neighbors=k, n_jobs=-1)

    def fit(self, x: FloatArray) -> None:
        self._model.fit(x)

    def score(self, x: FloatArray) -> FloatArray:
        distances, _ = self._model.kneighbors(x, n_neighbors=self._k)
        return np.asarray(distances[:, -1], dtype=np.float64)


class _Sklearn:
    """An sklearn novelty detector; score = -score_samples (higher = more anomalous)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def fit(self, x: FloatArray) -> None:
        self._model.fit(x)

    def score(self, x: FloatArray) -> FloatArray:
        return -np.asarray(self._model.score_samples(x), dtype=np.float64)


class _Pyod:
    """A PyOD detector; score = decision_function (higher = more anomalous)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def fit(self, x: FloatArray) -> None:
        self._model.fit(x)

    def score(self, x: FloatArray) -> FloatArray:
        return np.asarray(self._model.decision_function(x), dtype=np.float64)


def _iforest(seed: int) -> Baseline:
    from sklearn.ensemble import IsolationForest

    return _Sklearn(IsolationForest(random_state=seed, n_jobs=-1))


def _lof(seed: int) -> Baseline:
    from sklearn.neighbors import LocalOutlierFactor

    return _Sklearn(LocalOutlierFactor(novelty=True, n_neighbors=20, n_jobs=-1))


def _pyod_ae(seed: int) -> Baseline:
    from pyod.models.auto_encoder import AutoEncoder

    return _Pyod(AutoEncoder(random_state=seed, verbose=0, device="cpu"))


def _ecod(seed: int) -> Baseline:
    from pyod.models.ecod import ECOD

    return _Pyod(ECOD())


BASELINES: dict[str, tuple[str, Callable[[int], Baseline]]] = {
    "iforest": ("sklearn", _iforest),
    "lof": ("sklearn", _lof),
    "knn": ("sklearn", _KnnDistance),
    "pyod-ae": ("pyod", _pyod_ae),
    "ecod": ("pyod", _ecod),
}


def available_baselines() -> list[str]:
    """The baselines whose package is importable (scikit-learn, pyod: the `bench` extra)."""
    return [name for name, (package, _) in BASELINES.items() if importlib.util.find_spec(package) is not None]


def run_baseline(name: str, seed: int, x_fit: FloatArray, x_holdout: FloatArray, x_test: FloatArray) -> Run:
    """Fit on `x_fit`; the threshold is the (1 - 1%) quantile of the scores of `x_holdout` (never fitted on)."""
    model = BASELINES[name][1](seed)
    started = time.perf_counter()
    model.fit(x_fit)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    holdout, test = model.score(x_holdout), model.score(x_test)
    score_s = time.perf_counter() - started
    threshold = float(np.quantile(holdout, 1.0 - TARGET_FPR, method="higher"))
    return Run(test, test > threshold, TARGET_FPR, fit_s, score_s, {"n_fit": len(x_fit), "threshold": threshold})


def zscore_scores(values: FloatArray, keys: npt.ArrayLike, window: int) -> FloatArray:
    """Rolling z-score: |x_t - mean| / std over the previous `window` points of the key (largest over
    features); 0 until min(window, 10) points of history exist."""
    key_array = np.asarray(keys)
    scores = np.zeros(len(values), dtype=np.float64)
    for key in pd.unique(key_array):
        rows = np.flatnonzero(key_array == key)
        block = pd.DataFrame(values[rows])
        history = block.shift(1).rolling(window, min_periods=min(window, 10))
        z = (block - history.mean()).abs() / history.std().clip(lower=1e-9)
        scores[rows] = z.max(axis=1).fillna(0.0).to_numpy(dtype=np.float64)
    return scores
