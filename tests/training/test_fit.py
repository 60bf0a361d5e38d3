"""fit_model end to end: quality floor, scoring contract, explanations, artifacts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import safetensors.torch

from tests.training._data import MIXED, auc, correlated_frame, mixed_frame
from tests.training.conftest import FAST
from training.errors import ArtifactError, InsufficientDataError
from training.fit import fit_model
from training.fitted import FittedModel
from training.loop import TrainSettings
from training.model import AutoencoderSpec, DenseAutoencoder
from training.schema import Feature, Schema
from training.settings import ModelSettings, ThresholdSettings, min_rows_for


@pytest.fixture(scope="module")
def mixed_model() -> FittedModel:
    return fit_model(mixed_frame(600, seed=0), MIXED, ModelSettings(hidden=(16,), latent=3), FAST)


@pytest.mark.slow
def test_quality_floor_on_correlated_data(correlated_model: FittedModel) -> None:
    normal = correlated_frame(2000, seed=1)
    rng = np.random.default_rng(2)
    broken = normal.apply(lambda column: rng.permutation(column.to_numpy()))  # same marginals, no correlation
    normal_scores = correlated_model.score(normal).scores
    assert auc(normal_scores, correlated_model.score(broken).scores) >= 0.95

    values = normal.to_numpy(copy=True)
    target = rng.integers(0, 6, len(values))
    values[np.arange(len(values)), target] += 5.0 * values.std(axis=0)[target]
    spiked = pd.DataFrame(values, columns=normal.columns)
    result = correlated_model.score(spiked)
    assert auc(normal_scores, result.scores) >= 0.95
    assert float(np.mean(result.contributions.argmax(axis=1) == target)) >= 0.85
    for j in range(6):  # on average, a spike in feature j is blamed on feature j
        assert result.contributions[target == j].mean(axis=0).argmax() == j
    # the 1 % target false-positive rate holds roughly on fresh normal data
    assert float(np.mean(normal_scores > correlated_model.threshold.value)) < 0.03


def test_a_single_spike_is_explained_by_its_feature(correlated_model: FittedModel) -> None:
    row = correlated_frame(1, seed=5)
    row["f2"] += 10.0
    result = correlated_model.score(row)
    assert result.is_outlier[0]
    top = result.top_contributions(0, row.iloc[0].to_dict(), k=3)
    assert top[0]["feature"] == "f2"
    assert top[0]["actual"] == pytest.approx(row["f2"].iloc[0])
    assert top[0]["share"] > 0.5


def test_score_result_contract(mixed_model: FittedModel) -> None:
    frame = mixed_frame(300, seed=7)
    result = mixed_model.score(frame)
    assert result.scores.shape == (300,)
    assert result.scores.dtype == np.float64
    assert result.contributions.shape == (300, 5)
    np.testing.assert_allclose(result.contributions.sum(axis=1), result.scores, rtol=1e-9)
    np.testing.assert_array_equal(result.is_outlier, result.scores > mixed_model.threshold.value)
    assert result.threshold == mixed_model.threshold.value
    assert result.feature_names == MIXED.names
    assert list(result.expected.columns) == MIXED.names
    assert len(result.expected) == 300
    assert set(result.expected["region"]) <= {"eu", "us", "asia"}
    assert result.unseen.shape == (300, 5)
    assert not result.unseen.any()


def test_top_contributions_are_sorted_and_json_able(mixed_model: FittedModel) -> None:
    frame = mixed_frame(20, seed=8)
    result = mixed_model.score(frame)
    top = result.top_contributions(4, frame.iloc[4].to_dict(), k=3)
    assert len(top) == 3
    assert [t["contribution"] for t in top] == sorted((t["contribution"] for t in top), reverse=True)
    assert set(top[0]) == {"feature", "contribution", "share", "actual", "expected"}
    assert sum(t["share"] for t in top) <= 1.0 + 1e-9
    json.dumps(top, allow_nan=False)
    everything = result.top_contributions(4, {}, k=10)
    assert len(everything) == 5
    assert all(t["actual"] is None for t in everything)


def test_unseen_category_and_missing_optional_value_are_scored(mixed_model: FittedModel) -> None:
    frame = mixed_frame(4, seed=9)
    frame["region"] = ["eu", "mars", "us", "eu"]
    frame["errors"] = 0.5 * frame["load"]
    frame.loc[[0, 2], "errors"] = np.nan
    result = mixed_model.score(frame)
    assert np.isfinite(result.scores).all()
    np.testing.assert_array_equal(result.unseen[:, MIXED.names.index("region")], [False, True, False, False])
    assert result.top_contributions(1, frame.iloc[1].to_dict(), k=1)[0]["feature"] == "region"


def test_missing_required_column_is_a_key_error_naming_it(mixed_model: FittedModel) -> None:
    with pytest.raises(KeyError, match="latency"):
        mixed_model.score(mixed_frame(5, seed=1).drop(columns=["latency"]))


def test_empty_frame_scores_to_empty_result(mixed_model: FittedModel) -> None:
    result = mixed_model.score(mixed_frame(5, seed=1).iloc[:0])
    assert result.scores.shape == (0,)
    assert result.contributions.shape == (0, 5)


def test_report_is_json_able_and_complete(mixed_model: FittedModel) -> None:
    report = json.loads(json.dumps(mixed_model.report, allow_nan=False))
    for key in ("n_train", "n_val", "best_epoch", "epochs_run", "stopped_early", "device", "seconds",
                "train_loss", "val_loss", "history", "settings"):
        assert key in report, key
    assert report["n_train"] + report["n_val"] == 600
    assert len(report["history"]) == report["epochs_run"]
    assert report["settings"]["model"]["hidden"] == [16]
    assert report["settings"]["train"]["loss"] == "mse"
    # a small window (<= fold_max_rows) calibrates on every row, scored out of fold
    assert mixed_model.threshold.n_holdout == report["n_rows"]


def test_too_few_rows_is_insufficient_data_and_a_wide_window_scores_by_its_memory() -> None:
    assert min_rows_for(10) == 32
    assert min_rows_for(40) == 32
    with pytest.raises(InsufficientDataError, match="got 20, need at least 32"):
        fit_model(correlated_frame(20, seed=0), Schema.infer(correlated_frame(20, seed=0)), train=FAST)
    # 60 rows of 150 columns (a 60-row, 150-column business table was refused: "need 300 rows"): trained,
    # the reconstruction left out of the score, and the report says so; an anomaly still stands out
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 5))
    mixing = rng.normal(size=(5, 150))
    wide = pd.DataFrame(base @ mixing + 0.1 * rng.normal(size=(60, 150)), columns=[f"c{i}" for i in range(150)])
    fitted = fit_model(wide, Schema.infer(wide), train=FAST)
    assert fitted.report["wide"] is True
    assert fitted.scoring.weights[0] == 0.0
    fresh = pd.DataFrame(rng.normal(size=(40, 5)) @ mixing + 0.1 * rng.normal(size=(40, 150)), columns=wide.columns)
    odd = fresh.copy()
    odd.iloc[:, :10] += 8.0
    assert fitted.score(odd).scores.min() > np.quantile(fitted.score(fresh).scores, 0.9)
    assert fit_model(correlated_frame(400, seed=0), Schema.infer(correlated_frame(400, seed=0)),
                     train=FAST).report["wide"] is False


def test_bce_loss_uses_unit_range_and_a_sigmoid_output() -> None:
    frame = mixed_frame(300, seed=3)
    settings = TrainSettings(epochs=5, batch_size=64, loss="bce", device="cpu")
    model = fit_model(frame, MIXED, ModelSettings(hidden=(8,), latent=2), settings,
                      ThresholdSettings(target_fpr=0.05))
    assert model.spec.output == "sigmoid"
    assert model.preprocessor.unit_range
    assert model.threshold.target_fpr == 0.05
    scores = model.score(frame).scores
    assert np.isfinite(scores).all()


def _round_trip(model: FittedModel) -> tuple[bytes, dict[str, Any]]:
    weights, meta = model.to_artifact()
    return weights, json.loads(json.dumps(meta, allow_nan=False))


def test_artifact_round_trip_reproduces_scores_exactly(mixed_model: FittedModel) -> None:
    weights, meta = _round_trip(mixed_model)
    assert meta["format"] == "vigil-model"
    assert meta["format_version"] == 1
    memory = {"__memory__.bank", "__memory__.kdist"}
    assert set(safetensors.torch.load(weights)) == set(mixed_model.network.state_dict()) | memory
    loaded = FittedModel.from_artifact(weights, meta)
    frame = mixed_frame(200, seed=11)
    before, after = mixed_model.score(frame), loaded.score(frame)
    np.testing.assert_array_equal(after.scores, before.scores)
    np.testing.assert_array_equal(after.contributions, before.contributions)
    pd.testing.assert_frame_equal(after.expected, before.expected)
    assert loaded.threshold == mixed_model.threshold
    assert loaded.schema == mixed_model.schema
    assert loaded.report == mixed_model.report


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "format_version is 2"),
        ({"format": "pyod"}, "format is 'pyod'"),
        ({"loss": "huber"}, "unknown loss 'huber'"),
        ({"spec": {"n_inputs": 3}}, "bad 'spec'"),
        ({"threshold": {"value": 1.0}}, "bad 'threshold'"),
    ],
)
def test_from_artifact_refuses_bad_metadata(mixed_model: FittedModel, change: dict[str, Any], message: str) -> None:
    weights, meta = _round_trip(mixed_model)
    with pytest.raises(ArtifactError, match=message):
        FittedModel.from_artifact(weights, {**meta, **change})


def test_from_artifact_refuses_missing_keys(mixed_model: FittedModel) -> None:
    weights, meta = _round_trip(mixed_model)
    del meta["threshold"]
    with pytest.raises(ArtifactError, match="lacks threshold"):
        FittedModel.from_artifact(weights, meta)


def test_from_artifact_refuses_mismatched_or_unreadable_weights(mixed_model: FittedModel) -> None:
    _, meta = _round_trip(mixed_model)
    other_spec = AutoencoderSpec(n_inputs=mixed_model.spec.n_inputs, hidden=(12,), latent=3)
    other, _ = FittedModel(mixed_model.schema, mixed_model.preprocessor, other_spec, "mse",
                           mixed_model.threshold, DenseAutoencoder(other_spec), {}).to_artifact()
    with pytest.raises(ArtifactError, match=r"wrong shape .*encoder\.0\.weight \(12, 9\) != \(16, 9\)"):
        FittedModel.from_artifact(other, meta)
    with pytest.raises(ArtifactError, match="not readable safetensors"):
        FittedModel.from_artifact(b"\x80\x04not safetensors", meta)


def test_from_artifact_refuses_a_spec_that_does_not_fit_the_preprocessor(mixed_model: FittedModel) -> None:
    weights, meta = _round_trip(mixed_model)
    meta["spec"] = {**meta["spec"], "n_inputs": meta["spec"]["n_inputs"] + 1}
    with pytest.raises(ArtifactError, match="n_inputs"):
        FittedModel.from_artifact(weights, meta)


def test_trim_fraction_drops_the_highest_scoring_rows_and_refits() -> None:
    import numpy as np
    import pandas as pd

    from training.fit import fit_model
    from training.loop import TrainSettings
    from training.schema import Feature, Schema
    from training.settings import ModelSettings

    rng = np.random.default_rng(0)
    n = 1000
    error_only = ModelSettings(score="reconstruction")   # thresholds in the same units, comparable
    a = rng.normal(size=n)
    frame = pd.DataFrame({"x": a, "y": 2 * a + rng.normal(0, 0.05, n)})
    frame.loc[:19, "y"] = -3 * frame.loc[:19, "x"] + 8.0          # 2 % contamination: broken relation
    schema = Schema((Feature("x", "numeric"), Feature("y", "numeric")))
    settings = TrainSettings(epochs=40, patience=5, seed=0, device="cpu")
    plain = fit_model(frame, schema, error_only, train=settings)
    trimmed = fit_model(frame, schema, error_only, train=settings, trim_fraction=0.03)
    # the 20 broken rows go, and few normal ones (at most the 3 % cap)
    assert 20 <= trimmed.report["trimmed_rows"] <= 30
    assert trimmed.report["n_rows"] == 1000 - trimmed.report["trimmed_rows"]
    # the contaminating rows are not learnt as normal: they score far above the cleaner threshold
    bad = trimmed.score(frame.iloc[:20])
    assert bad.is_outlier.mean() >= 0.9
    assert trimmed.threshold.value < plain.threshold.value


def test_large_windows_calibrate_on_the_validation_split_small_ones_on_every_row() -> None:
    from training.fit import fit_model
    from training.loop import TrainSettings
    from training.schema import Feature, Schema
    from training.settings import ThresholdSettings

    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"x": rng.normal(size=400), "y": rng.normal(size=400)})
    schema = Schema((Feature("x", "numeric"), Feature("y", "numeric")))
    train = TrainSettings(epochs=5, seed=0, device="cpu")
    every = fit_model(frame, schema, train=train, threshold=ThresholdSettings(fold_max_rows=400))
    split = fit_model(frame, schema, train=train, threshold=ThresholdSettings(fold_max_rows=399))
    single = fit_model(frame, schema, train=train, threshold=ThresholdSettings(calibration_folds=1))
    assert every.threshold.n_holdout == 400
    assert split.threshold.n_holdout == single.threshold.n_holdout == split.report["n_val"] == 80
    assert split.threshold.value == single.threshold.value


def test_out_of_range_marks_the_same_cells_on_the_block_and_column_paths() -> None:
    schema = Schema(tuple(Feature(f"n{i}", "numeric") for i in range(4)))
    rng = np.random.default_rng(11)
    train = pd.DataFrame(rng.uniform(0, 10, size=(200, 4)), columns=schema.names)
    model = fit_model(train, schema, ModelSettings(score="reconstruction"), FAST)
    probe = pd.DataFrame(rng.uniform(0, 10, size=(6, 4)), columns=schema.names)
    probe.loc[1, "n0"] = 16.0          # beyond the range by more than half its width
    probe.loc[2, "n3"] = -6.0
    probe.loc[4, "n2"] = 14.0          # beyond, but within half a width: not marked
    fast = model.out_of_range(probe)
    slow = model.out_of_range(probe.astype({"n1": object}))
    np.testing.assert_array_equal(fast, slow)
    assert sorted(zip(*np.nonzero(fast), strict=True)) == [(1, 0), (2, 3)]
