"""Fit the score threshold above which a record is an outlier, on held-out normal scores."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Threshold", "fit_quantile_threshold", "tune_with_reviews"]

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
