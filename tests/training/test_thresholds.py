"""Quantile thresholds: requested false-positive rate, and honesty about small held-out sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.thresholds import Threshold, fit_quantile_threshold


def test_large_holdout_gives_the_requested_false_positive_rate() -> None:
    rng = np.random.default_rng(0)
    threshold = fit_quantile_threshold(rng.exponential(size=100_000), target_fpr=0.01)
    fresh = rng.exponential(size=200_000)
    assert abs(float(np.mean(fresh > threshold.value)) - 0.01) < 0.001
    assert threshold.method == "quantile"
    assert threshold.n_holdout == 100_000
    assert threshold.expected_outlier_rate == 0.01


def test_threshold_is_an_observed_score_at_or_above_the_quantile() -> None:
    errors = np.arange(1.0, 101.0)
    threshold = fit_quantile_threshold(errors, target_fpr=0.05)
    assert threshold.value in errors
    assert np.mean(errors > threshold.value) <= 0.05


def test_expected_outlier_rate_rises_for_tiny_holdouts() -> None:
    small = fit_quantile_threshold(np.arange(10.0), target_fpr=0.01)
    assert small.value == 9.0
    assert small.expected_outlier_rate == pytest.approx(1 / 11)
    assert fit_quantile_threshold(np.arange(99.0), 0.01).expected_outlier_rate == pytest.approx(0.01)


@pytest.mark.parametrize("target", [0.0, 0.5, -0.1, 1.0])
def test_target_outside_open_interval_is_refused(target: float) -> None:
    with pytest.raises(ValueError, match="target_fpr"):
        fit_quantile_threshold(np.arange(10.0), target)


def test_empty_or_non_finite_errors_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        fit_quantile_threshold(np.array([]), 0.01)
    with pytest.raises(ValueError, match="finite"):
        fit_quantile_threshold(np.array([1.0, np.nan]), 0.01)


def test_round_trip_through_json() -> None:
    threshold = fit_quantile_threshold(np.random.default_rng(1).random(50), 0.02)
    assert Threshold.from_dict(json.loads(json.dumps(threshold.to_dict()))) == threshold
