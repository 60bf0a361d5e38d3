"""Detection-quality metrics on labelled scores: ROC-AUC, average precision, rates at a threshold."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RatesAtThreshold", "average_precision", "rates_at", "roc_auc"]

logger = logging.getLogger(__name__)


def _checked(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} and {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomaly)")
    if np.isnan(s).any():
        raise ValueError(f"scores must not be NaN; {int(np.isnan(s).sum())} are")
    return y.astype(bool), s


def _average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks of `values` [n], tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]                    # exclusive
    mean_rank = (starts + 1 + ends) / 2.0                    # mean of ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve of `scores` [n] (higher = more anomalous) against `labels` [n] (1 = anomaly).

    The probability that a random anomaly scores above a random normal, ties counting one half
    (the Mann-Whitney U statistic over average ranks). NaN when the labels hold one class only.
    """
    y, s = _checked(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def average_precision(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Average precision: sum over distinct score thresholds t (descending) of (R_t - R_prev) * P_t.

    P_t and R_t are the precision and recall of flagging every score >= t; tied scores enter
    together (no interpolation, as scikit-learn's average_precision_score). NaN without anomalies.
    """
    y, s = _checked(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # the last index of each run of equal scores: a threshold flags whole ties at once
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = np.cumsum(y_sorted)[last].astype(np.float64)
    flagged = (last + 1).astype(np.float64)
    recall = tp / n_pos
    precision = tp / flagged
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


@dataclass(frozen=True, slots=True)
class RatesAtThreshold:
    """Counts and rates of flagging every score above a threshold; rates are NaN when undefined."""

    true_positives: int
    false_positives: int
    n_anomalies: int
    n_normals: int

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else float("nan")

    @property
    def recall(self) -> float:
        return self.true_positives / self.n_anomalies if self.n_anomalies else float("nan")

    @property
    def false_positive_rate(self) -> float:
        return self.false_positives / self.n_normals if self.n_normals else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"true_positives": self.true_positives, "false_positives": self.false_positives,
                "n_anomalies": self.n_anomalies, "n_normals": self.n_normals, "precision": self.precision,
                "recall": self.recall, "false_positive_rate": self.false_positive_rate}


def rates_at(labels: npt.ArrayLike, flags: npt.ArrayLike) -> RatesAtThreshold:
    """Precision, recall and false-positive rate of boolean `flags` [n] against `labels` [n] (1 = anomaly)."""
    y, f = _checked(labels, np.asarray(flags, dtype=np.float64))
    flagged = f.astype(bool)
    return RatesAtThreshold(
        true_positives=int((flagged & y).sum()),
        false_positives=int((flagged & ~y).sum()),
        n_anomalies=int(y.sum()),
        n_normals=int((~y).sum()),
    )
