"""Fit the score threshold above which a record is an outlier, on held-out normal scores."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Threshold", "fit_quantile_threshold"]

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
