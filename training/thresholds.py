"""Fit the score threshold above which a record is an outlier, on held-out normal scores."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from training.choices import THRESHOLD_METHODS

MIN_POT_EXCEEDANCES = 10

__all__ = [
    "Threshold",
    "fit_mad_threshold",
    "fit_pot_threshold",
    "fit_quantile_threshold",
    "fit_sigma_threshold",
    "fit_threshold",
    "tune_with_reviews",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Threshold:
    """A fitted threshold: a score above `value` is an outlier.

    `expected_outlier_rate` is the false-positive rate one should expect on normal data; it is at
    least `target_fpr` and higher when too few held-out scores back the quantile.
    """

    value: float
    method: str
    target_fpr: float
    n_holdout: int
    expected_outlier_rate: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "method": self.method,
            "target_fpr": self.target_fpr,
            "n_holdout": self.n_holdout,
            "expected_outlier_rate": self.expected_outlier_rate,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Threshold:
        return cls(
            value=float(d["value"]),
            method=str(d["method"]),
            target_fpr=float(d["target_fpr"]),
            n_holdout=int(d["n_holdout"]),
            expected_outlier_rate=float(d["expected_outlier_rate"]),
        )


def _clean(errors: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    scores = np.asarray(errors, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("cannot fit a threshold on an empty set of scores")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(scores)).sum())} are not")
    return scores


def _empirical(scores: npt.NDArray[np.float64], value: float, method: str, target_fpr: float) -> Threshold:
    """A threshold whose expected rate is the share of held-out scores above it (at least 1 / (n + 1))."""
    n = int(scores.size)
    rate = float(np.mean(scores > value))
    return Threshold(value=float(value), method=method, target_fpr=float(target_fpr), n_holdout=n,
                     expected_outlier_rate=max(rate, 1.0 / (n + 1)))


def fit_sigma_threshold(errors: npt.NDArray[np.floating[Any]], k: float, target_fpr: float = 0.01) -> Threshold:
    """mean + k * standard deviation of held-out scores; the expected rate is the held-out share above it."""
    if not k > 0:
        raise ValueError(f"k must be > 0, got {k}")
    scores = _clean(errors)
    return _empirical(scores, float(scores.mean() + k * scores.std()), "sigma", target_fpr)


def fit_mad_threshold(errors: npt.NDArray[np.floating[Any]], k: float, target_fpr: float = 0.01) -> Threshold:
    """median + k * 1.4826 * MAD of held-out scores (robust to outliers in the held-out set)."""
    if not k > 0:
        raise ValueError(f"k must be > 0, got {k}")
    scores = _clean(errors)
    median = float(np.median(scores))
    mad = 1.4826 * float(np.median(np.abs(scores - median)))
    if not mad > 0:
        mad = float(scores.std())
    return _empirical(scores, median + k * mad, "mad", target_fpr)


def fit_pot_threshold(
    errors: npt.NDArray[np.floating[Any]], risk: float, initial_level: float | None = None
) -> Threshold:
    """Peaks over threshold: a generalized Pareto fit to the tail of held-out scores, at a risk level.

    Scores above an initial threshold u (the `initial_level` quantile; by default the one leaving
    max(5 * risk, 10 scores) above it) are fitted with a GPD (shape xi, scale sigma, location 0).
    The threshold is where the fitted tail's exceedance probability equals `risk`:
    u + sigma / xi * ((risk * n / n_u) ** -xi - 1)  (u - sigma * log(risk * n / n_u) when xi = 0).
    With fewer than MIN_POT_EXCEEDANCES tail scores, or a failed fit, the plain quantile is used
    (method "pot->quantile"). The expected outlier rate is `risk`.
    """
    if not 0.0 < risk < 0.5:
        raise ValueError(f"risk must be in (0, 0.5), got {risk}")
    scores = _clean(errors)
    n = int(scores.size)
    if initial_level is None:
        initial_level = 1.0 - max(5.0 * risk, MIN_POT_EXCEEDANCES / n) if n else 0.9
    initial_level = min(max(initial_level, 0.5), 1.0 - risk)
    u = float(np.quantile(scores, initial_level))
    tail = scores[scores > u] - u
    if tail.size < MIN_POT_EXCEEDANCES or float(np.ptp(tail)) <= 0:
        fallback = fit_quantile_threshold(scores, risk)
        return Threshold(fallback.value, "pot->quantile", fallback.target_fpr, fallback.n_holdout,
                         fallback.expected_outlier_rate)
    xi, _, sigma = stats.genpareto.fit(tail, floc=0.0)
    ratio = risk * n / tail.size
    value = u - sigma * np.log(ratio) if abs(xi) < 1e-6 else u + sigma / xi * (ratio ** (-xi) - 1.0)
    if not np.isfinite(value):
        fallback = fit_quantile_threshold(scores, risk)
        return Threshold(fallback.value, "pot->quantile", fallback.target_fpr, fallback.n_holdout,
                         fallback.expected_outlier_rate)
    return Threshold(value=float(value), method="pot", target_fpr=float(risk), n_holdout=n,
                     expected_outlier_rate=max(float(risk), 1.0 / (n + 1)))


def fit_threshold(
    errors: npt.NDArray[np.floating[Any]], method: str, target_fpr: float, k: float = 3.0
) -> Threshold:
    """Dispatch to the fitter for `method` (one of THRESHOLD_METHODS)."""
    if method == "quantile":
        return fit_quantile_threshold(errors, target_fpr)
    if method == "sigma":
        return fit_sigma_threshold(errors, k, target_fpr)
    if method == "mad":
        return fit_mad_threshold(errors, k, target_fpr)
    if method == "pot":
        return fit_pot_threshold(errors, target_fpr)
    raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {method!r}")


def fit_quantile_threshold(errors: npt.NDArray[np.floating[Any]], target_fpr: float) -> Threshold:
    """The (1 - target_fpr) quantile of held-out scores `errors` [n] (numpy method "higher").

    With n held-out scores no quantile can certify a rate below about 1 / (n + 1) (a new normal
    score exceeds the largest of n with that probability), hence `expected_outlier_rate`.
    """
    if not 0.0 < target_fpr < 0.5:
        raise ValueError(f"target_fpr must be in (0, 0.5), got {target_fpr}")
    scores = np.asarray(errors, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("cannot fit a threshold on an empty set of scores")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(scores)).sum())} are not")
    value = float(np.quantile(scores, 1.0 - target_fpr, method="higher"))
    n = int(scores.size)
    return Threshold(
        value=value,
        method="quantile",
        target_fpr=float(target_fpr),
        n_holdout=n,
        expected_outlier_rate=max(float(target_fpr), 1.0 / (n + 1)),
    )


def tune_with_reviews(
    threshold: Threshold,
    val_scores: npt.NDArray[np.floating[Any]],
    confirmed: npt.NDArray[np.floating[Any]],
    dismissed: npt.NDArray[np.floating[Any]],
    max_fpr: float,
) -> tuple[Threshold, dict[str, Any]]:
    """The threshold with the best F1 on reviewed outliers whose rate on held-out normals stays <= max_fpr.

    `confirmed` and `dismissed` are the current model's scores of outliers people confirmed as real
    and dismissed as false alarms; `val_scores` are the held-out normal scores the threshold was
    fitted on. Candidates are the fitted threshold and the points just above and below each
    reviewed score; ties go to the higher threshold (fewer alerts). Returns the threshold (method
    suffixed "+reviews" when it moved) and a JSON-able summary.
    """
    val = np.asarray(val_scores, dtype=np.float64)
    pos = np.asarray(confirmed, dtype=np.float64)
    neg = np.asarray(dismissed, dtype=np.float64)
    reviewed = np.concatenate([pos, neg])
    candidates = np.unique(np.concatenate([[threshold.value], reviewed, np.nextafter(reviewed, -np.inf)]))

    def f1(t: float) -> float:
        tp = float(np.sum(pos > t))
        fp = float(np.sum(neg > t))
        fn = float(np.sum(pos <= t))
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    best, best_f1 = threshold.value, f1(threshold.value)
    for t in candidates[::-1]:            # high to low: a tie keeps the higher threshold
        if float(np.mean(val > t)) > max_fpr:
            break
        score = f1(float(t))
        if score > best_f1 + 1e-12:
            best, best_f1 = float(t), score
    summary = {"confirmed": int(pos.size), "dismissed": int(neg.size), "threshold_before": threshold.value,
               "threshold_after": best, "f1_before": f1(threshold.value), "f1_after": best_f1,
               "max_fpr": max_fpr}
    if best == threshold.value:
        return threshold, summary
    rate = float(np.mean(val > best)) if val.size else threshold.expected_outlier_rate
    tuned = Threshold(value=best, method=f"{threshold.method}+reviews", target_fpr=threshold.target_fpr,
                      n_holdout=threshold.n_holdout,
                      expected_outlier_rate=max(rate, 1.0 / (threshold.n_holdout + 1)))
    return tuned, summary
