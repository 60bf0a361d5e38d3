"""The quality benchmark's splits, features and scorers: fast checks on small arrays and the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench._quality_data import (
    DATA,
    DataMissingError,
    SeriesTask,
    calibration_split,
    lagged,
    load_tabular,
    nab_tasks,
    require,
    series_holdout,
    skab_task,
    standardise,
    subsample,
    tabular_split,
)
from bench._quality_methods import run_baseline, vigil_detector, zscore_scores

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not at {DATA}")


def test_tabular_split_trains_on_normals_only_and_tests_every_anomaly() -> None:
    y = np.array([0] * 90 + [1] * 10)
    train, test = tabular_split(y, seed=0)
    assert len(train) == 54 and (y[train] == 0).all()                 # 60 % of 90 normals
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.union1d(train, test), np.arange(100))
    assert (y[test] == 1).sum() == 10
    again, _ = tabular_split(y, seed=0)
    other, _ = tabular_split(y, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_calibration_split_holds_back_a_fifth() -> None:
    fit, holdout = calibration_split(100, seed=3)
    assert (len(fit), len(holdout)) == (80, 20)
    assert np.array_equal(np.union1d(fit, holdout), np.arange(100))
    assert np.array_equal(calibration_split(100, seed=3)[1], holdout)


def test_subsample_caps_with_a_seed() -> None:
    rows = np.arange(1000) * 2
    capped = subsample(rows, 100, seed=0)
    assert len(capped) == 100 and len(np.unique(capped)) == 100 and np.isin(capped, rows).all()
    assert np.array_equal(capped, subsample(rows, 100, seed=0))
    assert np.array_equal(subsample(rows[:50], 100, seed=0), rows[:50])


def test_standardise_uses_the_fitted_rows_statistics() -> None:
    fit = np.array([[1.0, 5.0], [3.0, 5.0]])
    scaled_fit, scaled_other = standardise(fit, np.array([[5.0, 6.0]]))
    assert np.allclose(scaled_fit, [[-1.0, 0.0], [1.0, 0.0]])
    assert np.allclose(scaled_other, [[3.0, 1.0]])                    # constant column: std taken as 1


def test_lagged_windows_stay_within_their_key() -> None:
    values = np.array([[1.0], [2.0], [3.0], [10.0], [20.0]])
    keys = ["a", "a", "a", "b", "b"]
    assert np.array_equal(lagged(values, keys, 2), [[1, 1], [1, 2], [2, 3], [10, 10], [10, 20]])
    two = np.array([[1.0, -1.0], [2.0, -2.0]])
    assert np.array_equal(lagged(two, ["k", "k"], 2), [[1, -1, 1, -1], [1, -1, 2, -2]])
    assert lagged(values, keys, 1) is values


def test_series_holdout_takes_the_latest_training_rows_of_each_key() -> None:
    frame = pd.DataFrame({"key": ["a"] * 10 + ["b"] * 5, "value": 0.0, "label": 0})
    train = np.array([True] * 8 + [False] * 2 + [True] * 5)
    task = SeriesTask("t", frame, ("value",), train, ~train)
    fit, holdout = series_holdout(task)
    assert list(np.flatnonzero(holdout)) == [6, 7, 14]
    assert not (fit & holdout).any() and np.array_equal(fit | holdout, train)


def test_zscore_flags_a_jump_after_a_flat_history() -> None:
    values = np.array([[1.0], [1.0], [1.1], [0.9], [1.0], [9.0]])
    scores = zscore_scores(values, ["k"] * 6, window=4)
    assert scores[:4].tolist() == [0.0] * 4                          # too little history yet
    assert scores[4] < 1 and scores[5] > 50


def test_vigil_configurations_are_validated_like_config_toml() -> None:
    det = vigil_detector({"model": {"hidden": [8], "latent": 2}}, ["x0", "x1"], seed=4)
    assert det.model.hidden == (8,) and det.model.seed == 4 and det.feature_schema.names == ["x0", "x1"]
    assert vigil_detector({"model": {"seed": 9}}, ["x0"], seed=4).model.seed == 9
    with pytest.raises(ValueError, match="latent"):
        vigil_detector({"model": {"latent": 0}}, ["x0"], seed=0)
    with pytest.raises(ValueError, match="not \\['scoring'\\]"):
        vigil_detector({"scoring": {}}, ["x0"], seed=0)


def test_knn_baseline_ranks_a_far_point_first_and_calibrates_on_the_holdout() -> None:
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    fit, holdout = rng.normal(size=(400, 3)), rng.normal(size=(200, 3))
    test = np.vstack([rng.normal(size=(1000, 3)), [[8.0, 8.0, 8.0]]])
    run = run_baseline("knn", 0, fit, holdout, test)
    assert run.scores.argmax() == 1000 and run.flags[1000]
    assert run.target_fpr == 0.01
    assert 0.0 < run.flags[:1000].mean() < 0.04


def test_missing_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match="benchmark data not found"):
        require(tmp_path / "nowhere")


@needs_data
def test_tabular_sets_load_as_described() -> None:
    x, y = load_tabular("wbc")
    assert x.shape == (223, 9) and x.dtype == np.float32 and int(y.sum()) == 10


@needs_data
def test_nab_trains_on_the_first_half_outside_windows_and_tests_the_second() -> None:
    (task,) = nab_tasks(["rogue_agent_key_hold"])
    n = len(task.frame)
    assert n == 1882
    assert np.flatnonzero(task.test)[0] == n // 2 and task.test[n // 2:].all()
    assert (task.labels[task.train] == 0).all() and np.flatnonzero(task.train).max() < n // 2
    assert task.labels.mean() == pytest.approx(0.101, abs=0.001)       # the README's in-window rate


@needs_data
def test_skab_trains_on_the_free_run_and_the_normal_heads_of_runs() -> None:
    task = skab_task()
    frame = task.frame
    assert len(task.features) == 8 and frame["key"].nunique() == 35
    free = frame["key"] == "anomaly-free/anomaly-free"
    assert task.train[free].all() and not task.test[free].any()
    assert (task.labels[task.train] == 0).all() and not (task.train & task.test).any()
    run = frame["key"] == "valve1/0"
    assert task.test[run].sum() == run.sum() - 400
