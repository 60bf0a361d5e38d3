"""ROC-AUC, average precision and rates at a threshold against cases computed by hand (ties included)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.quality import average_precision, rates_at, roc_auc


def test_perfect_ranking_scores_one() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert average_precision([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_inverted_ranking() -> None:
    # descending: 0.9 (normal), 0.8 (normal), 0.2 (anomaly), 0.1 (anomaly)
    # precision/recall at each cut: 0/0, 0/0, 1/3 at recall 1/2, 1/2 at recall 1 -> AP = 1/6 + 1/4
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert average_precision([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(5 / 12)


def test_ties_count_one_half_and_enter_together() -> None:
    labels, scores = [0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]
    # pairs (anomaly, normal): (0.5, 0.5) tie = 1/2, (0.5, 0.2) = 1, (0.9, 0.5) = 1, (0.9, 0.2) = 1
    assert roc_auc(labels, scores) == pytest.approx(3.5 / 4)
    # cuts: {0.9} P=1 R=1/2; {0.9, 0.5, 0.5} P=2/3 R=1; all P=1/2 R=1 -> 1/2 + 1/2 * 2/3
    assert average_precision(labels, scores) == pytest.approx(5 / 6)


def test_all_scores_tied() -> None:
    labels = [1, 0, 0, 0, 1]
    assert roc_auc(labels, [3.0] * 5) == 0.5
    assert average_precision(labels, [3.0] * 5) == pytest.approx(2 / 5)


def test_middle_case_by_hand() -> None:
    labels = [1, 0, 1, 0, 0]
    scores = [0.7, 0.9, 0.4, 0.1, 0.4]
    # pairs: 0.7 beats 0.1, 0.4 (x1) -> 2, loses to 0.9; 0.4 beats 0.1, ties 0.4, loses 0.9 -> 1.5; total 3.5 / 6
    assert roc_auc(labels, scores) == pytest.approx(3.5 / 6)
    # cuts: {0.9} P=0 R=0; {0.9, 0.7} P=1/2 R=1/2; {+0.4, 0.4} P=2/4 R=1; {+0.1} P=2/5 R=1
    assert average_precision(labels, scores) == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)


def test_infinite_scores_rank_highest() -> None:
    assert roc_auc([0, 0, 1], [1.0, 2.0, math.inf]) == 1.0


def test_one_class_is_undefined() -> None:
    assert math.isnan(roc_auc([0, 0, 0], [1, 2, 3]))
    assert math.isnan(roc_auc([1, 1], [1, 2]))
    assert math.isnan(average_precision([0, 0], [1, 2]))
    assert average_precision([1, 1], [1, 2]) == 1.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        roc_auc([0, 2], [1, 2])
    with pytest.raises(ValueError, match="differ in length"):
        average_precision([0, 1, 1], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [1, math.nan])


def test_rates_at_a_threshold() -> None:
    rates = rates_at([1, 1, 0, 0, 0], [True, False, True, False, False])
    assert (rates.true_positives, rates.false_positives, rates.n_anomalies, rates.n_normals) == (1, 1, 2, 3)
    assert rates.precision == 0.5
    assert rates.recall == 0.5
    assert rates.false_positive_rate == pytest.approx(1 / 3)
    nothing_flagged = rates_at([1, 0], [False, False])
    assert math.isnan(nothing_flagged.precision)
    assert nothing_flagged.recall == 0.0


def test_agrees_with_scikit_learn_on_random_ties() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    for _ in range(20):
        labels = rng.integers(0, 2, 200)
        scores = rng.integers(0, 15, 200).astype(float)      # many ties
        assert roc_auc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores))
        assert average_precision(labels, scores) == pytest.approx(metrics.average_precision_score(labels, scores))
