"""Sigma, MAD and peaks-over-threshold thresholds: hand-computed values, a known tail recovered, fallbacks,
refusals, dispatch, and the method recorded by fit_model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from training.choices import THRESHOLD_METHODS
from training.fit import fit_model
from training.loop import TrainSettings
from training.schema import Schema
from training.settings import ModelSettings, ThresholdSettings
from training.thresholds import (
    MIN_POT_EXCEEDANCES,
    Threshold,
    fit_mad_threshold,
    fit_pot_threshold,
    fit_quantile_threshold,
    fit_sigma_threshold,
    fit_threshold,
)

# --- sigma and MAD on hand-computed arrays ---------------------------------------------------------


def test_sigma_is_mean_plus_k_population_std() -> None:
    scores = np.arange(1.0, 11.0)                # mean 5.5, population variance 8.25
    threshold = fit_sigma_threshold(scores, k=2.0, target_fpr=0.02)
    assert threshold.value == pytest.approx(5.5 + 2.0 * math.sqrt(8.25))
    assert threshold.method == "sigma"
    assert threshold.target_fpr == 0.02
    assert threshold.n_holdout == 10
    assert threshold.expected_outlier_rate == pytest.approx(1 / 11)   # no held-out score above: at least 1 / (n + 1)
    low = fit_sigma_threshold(scores, k=0.5)                               # 5.5 + 1.436: 7..10 are above
    assert low.value == pytest.approx(5.5 + 0.5 * math.sqrt(8.25))
    assert low.expected_outlier_rate == pytest.approx(0.4)                # the held-out share above it


def test_mad_is_median_plus_k_scaled_mad_and_ignores_one_huge_outlier() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0, 100.0])   # median 3, |dev| 2 1 0 1 97 -> MAD 1
    threshold = fit_mad_threshold(scores, k=3.0, target_fpr=0.05)
    assert threshold.value == pytest.approx(3.0 + 3.0 * 1.4826)
    assert threshold.method == "mad"
    assert threshold.target_fpr == 0.05
    assert threshold.n_holdout == 5
    assert threshold.expected_outlier_rate == pytest.approx(0.2)          # only 100 is above
    assert fit_sigma_threshold(scores, k=3.0).value > 100.0               # the non-robust one is dragged up


def test_mad_falls_back_to_the_std_when_the_mad_is_zero() -> None:
    scores = np.array([5.0, 5.0, 5.0, 5.0, 9.0])     # MAD 0; population std 1.6
    threshold = fit_mad_threshold(scores, k=2.0)
    assert threshold.value == pytest.approx(5.0 + 2.0 * 1.6)
    assert threshold.expected_outlier_rate == pytest.approx(0.2)


# --- peaks over threshold --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "draw", "true_q99"),
    [
        ("exponential", lambda rng, n: rng.exponential(1.0, n), math.log(100.0)),
        # generalized Pareto, shape 0.2, scale 1: quantile p is ((1 - p) ** -0.2 - 1) / 0.2
        ("genpareto", lambda rng, n: (rng.random(n) ** -0.2 - 1.0) / 0.2, (0.01 ** -0.2 - 1.0) / 0.2),
    ],
)
def test_pot_recovers_a_known_tail(name: str, draw: object, true_q99: float) -> None:
    rng = np.random.default_rng(0)
    sample = draw(rng, 5000)   # type: ignore[operator]
    threshold = fit_pot_threshold(sample, risk=0.01)
    assert threshold.method == "pot", name
    assert threshold.value == pytest.approx(true_q99, rel=0.10)
    assert threshold.n_holdout == 5000
    assert threshold.target_fpr == 0.01
    assert threshold.expected_outlier_rate == 0.01
    fresh = draw(np.random.default_rng(1), 200_000)   # type: ignore[operator]
    assert 0.005 <= float(np.mean(fresh > threshold.value)) <= 0.015


def test_pot_threshold_is_where_the_fitted_tail_reaches_the_risk() -> None:
    """The documented construction: u = the quantile leaving max(5 * risk, 10 / n) above, a GPD (location 0)
    fitted to the excesses over u, and the point where n_u / n * P(excess > t - u) equals the risk."""
    sample = np.random.default_rng(2).gamma(2.0, size=3000)
    risk = 0.004
    threshold = fit_pot_threshold(sample, risk)
    u = float(np.quantile(sample, 1.0 - 5.0 * risk))
    tail = sample[sample > u] - u
    xi, _, sigma = stats.genpareto.fit(tail, floc=0.0)
    tail_probability = tail.size / sample.size * stats.genpareto.sf(threshold.value - u, xi, loc=0.0, scale=sigma)
    assert tail_probability == pytest.approx(risk, rel=1e-9)
    assert threshold.value > u


def test_pot_extrapolates_beyond_the_largest_held_out_score() -> None:
    """A 1e-4 risk on 2000 held-out scores is beyond any empirical quantile; the fitted tail reaches it."""
    values, above_max = [], []
    for seed in range(20):
        sample = np.random.default_rng(seed).exponential(1.0, 2000)
        threshold = fit_pot_threshold(sample, risk=1e-4, initial_level=0.95)
        assert threshold.method == "pot"
        assert threshold.expected_outlier_rate == pytest.approx(1 / 2001)   # never claims better than 1 / (n + 1)
        values.append(threshold.value)
        above_max.append(threshold.value > sample.max())
    assert float(np.median(values)) == pytest.approx(math.log(1e4), rel=0.10)
    assert np.mean(above_max) >= 0.9
    assert fit_quantile_threshold(sample, 1e-4).value == sample.max()   # what the plain quantile can do


def test_pot_with_an_explicit_initial_level() -> None:
    rng = np.random.default_rng(4)
    sample = rng.exponential(1.0, 5000)
    threshold = fit_pot_threshold(sample, risk=0.01, initial_level=0.9)
    assert threshold.method == "pot"
    assert threshold.value == pytest.approx(math.log(100.0), rel=0.10)


def test_pot_falls_back_to_the_quantile_with_too_few_tail_points() -> None:
    scores = np.random.default_rng(5).exponential(1.0, 15)   # the tail above the median has 7 < 10 points
    threshold = fit_pot_threshold(scores, risk=0.01)
    assert threshold.method == "pot->quantile"
    quantile = fit_quantile_threshold(scores, 0.01)
    assert threshold.value == quantile.value
    assert threshold.n_holdout == 15
    assert threshold.expected_outlier_rate == quantile.expected_outlier_rate == pytest.approx(1 / 16)
    assert MIN_POT_EXCEEDANCES == 10


def test_pot_falls_back_to_the_quantile_on_a_flat_tail() -> None:
    scores = np.array([0.0] * 90 + [1.0] * 10)   # 10 tail points, all equal: nothing to fit
    threshold = fit_pot_threshold(scores, risk=0.01)
    assert threshold.method == "pot->quantile"
    assert threshold.value == 1.0


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fitter", [fit_sigma_threshold, fit_mad_threshold])
@pytest.mark.parametrize("k", [0.0, -1.0, float("nan")])
def test_sigma_and_mad_refuse_a_non_positive_k(fitter: object, k: float) -> None:
    with pytest.raises(ValueError, match="k must be > 0"):
        fitter(np.arange(10.0), k)   # type: ignore[operator]


@pytest.mark.parametrize("risk", [0.0, 0.5, -0.01, 1.0, float("nan")])
def test_pot_refuses_a_risk_outside_the_open_interval(risk: float) -> None:
    with pytest.raises(ValueError, match="risk must be in"):
        fit_pot_threshold(np.arange(100.0), risk)


@pytest.mark.parametrize("method", THRESHOLD_METHODS)
def test_every_method_refuses_empty_or_non_finite_scores(method: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        fit_threshold(np.array([]), method, 0.01)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="finite"):
            fit_threshold(np.array([1.0, 2.0, bad]), method, 0.01)


# --- dispatch and settings -------------------------------------------------------------------------


def test_fit_threshold_dispatches_to_each_method() -> None:
    scores = np.random.default_rng(6).gamma(2.0, size=2000)
    assert fit_threshold(scores, "quantile", 0.02, k=9.0) == fit_quantile_threshold(scores, 0.02)
    assert fit_threshold(scores, "sigma", 0.02, k=2.5) == fit_sigma_threshold(scores, 2.5, 0.02)
    assert fit_threshold(scores, "mad", 0.02, k=2.5) == fit_mad_threshold(scores, 2.5, 0.02)
    assert fit_threshold(scores, "pot", 0.02, k=9.0) == fit_pot_threshold(scores, 0.02)
    assert fit_threshold(scores, "sigma", 0.02).value == fit_sigma_threshold(scores, 3.0).value   # default k 3
    methods = {fit_threshold(scores, m, 0.02, k=2.5).method for m in THRESHOLD_METHODS}
    assert methods == set(THRESHOLD_METHODS)


def test_fit_threshold_refuses_an_unknown_method() -> None:
    with pytest.raises(ValueError, match=r"threshold method must be one of .*'evt'"):
        fit_threshold(np.arange(10.0), "evt", 0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "evt"}, "method must be one of"),
        ({"target_fpr": 0.0}, "target_fpr must be in"),
        ({"target_fpr": 0.5}, "target_fpr must be in"),
        ({"target_fpr": float("nan")}, "target_fpr must be in"),
        ({"k": 0.0}, "k must be > 0"),
        ({"k": -2.0}, "k must be > 0"),
        ({"k": float("nan")}, "k must be > 0"),
        ({"calibration_folds": 0}, "calibration_folds >= 1"),
        ({"fold_max_rows": -1}, "fold_max_rows >= 0"),
    ],
)
def test_threshold_settings_refuse_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThresholdSettings(**kwargs)   # type: ignore[arg-type]


def test_threshold_settings_defaults() -> None:
    settings = ThresholdSettings()
    assert (settings.method, settings.target_fpr, settings.k) == ("quantile", 0.01, 3.0)
    assert (settings.calibration_folds, settings.fold_max_rows) == (5, 5000)


@pytest.fixture(scope="module")
def small_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    a = rng.normal(size=800)
    return pd.DataFrame({"x": a, "y": 2.0 * a + rng.normal(0, 0.1, 800), "z": rng.normal(size=800)})


@pytest.mark.parametrize("folds", [5, 1])
@pytest.mark.parametrize("method", THRESHOLD_METHODS)
def test_fit_model_records_the_threshold_method(small_frame: pd.DataFrame, method: str, folds: int) -> None:
    settings = ThresholdSettings(method=method, target_fpr=0.02, k=2.5, calibration_folds=folds)  # type: ignore[arg-type]
    train = TrainSettings(epochs=5, batch_size=128, learning_rate=3e-3, device="cpu", seed=0)
    model = fit_model(small_frame, Schema.infer(small_frame), ModelSettings(hidden=(8,), latent=2), train, settings)
    threshold = model.threshold
    assert threshold.method == method
    assert threshold.target_fpr == 0.02
    # 5 folds: every row, scored out of fold; 1: the validation split
    n = 800 if folds > 1 else 160
    assert threshold.n_holdout == n == (model.report["n_rows"] if folds > 1 else model.report["n_val"])
    assert model.val_scores is not None and len(model.val_scores) == n
    # fitted on the held-out scores with the settings' method, fpr and k
    assert threshold == fit_threshold(model.val_scores, method, 0.02, 2.5)
    share_above = float(np.mean(model.val_scores > threshold.value))
    if method in ("pot", "quantile"):
        assert threshold.expected_outlier_rate == 0.02
    else:
        assert threshold.expected_outlier_rate == pytest.approx(max(share_above, 1 / (n + 1)))
    if method == "quantile":
        assert share_above <= 0.02
    report = json.loads(json.dumps(model.report, allow_nan=False))
    assert report["threshold"] == threshold.to_dict()
    assert report["settings"]["threshold"] == {"method": method, "target_fpr": 0.02, "k": 2.5,
                                               "calibration_folds": folds, "fold_max_rows": 5000}
    assert Threshold.from_dict(report["threshold"]) == threshold
    scores = model.score(small_frame.iloc[:50])
    np.testing.assert_array_equal(scores.is_outlier, scores.scores > threshold.value)
