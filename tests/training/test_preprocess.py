"""Preprocessor: robust scaling, one-hot categories, missing values, decoding, serialisation."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from tests.training._data import MIXED, mixed_frame
from training.preprocess import Preprocessor
from training.schema import Feature, Schema


def _numeric(values: list[float] | np.ndarray, unit_range: bool = False) -> Preprocessor:
    frame = pd.DataFrame({"x": values})
    return Preprocessor.fit(frame, Schema((Feature("x", "numeric"),)), unit_range=unit_range)


def _encode(pre: Preprocessor, values: list[float]) -> np.ndarray:
    return pre.transform(pd.DataFrame({"x": values}))[:, 0]


def test_columns_and_slices_are_contiguous_per_feature() -> None:
    pre = Preprocessor.fit(mixed_frame(200, seed=1), MIXED)
    assert pre.columns == [
        "load", "latency", "errors", "errors__missing",
        "region=eu", "region=us", "region=asia", "region=__unseen__", "busy",
    ]
    assert pre.n_columns == 9
    assert pre.feature_slices["errors"] == slice(2, 4)
    assert pre.feature_slices["region"] == slice(4, 8)
    assert pre.transform(mixed_frame(50, seed=2)).shape == (50, 9)
    assert pre.transform(mixed_frame(50, seed=2)).dtype == np.float32


def test_round_trip_through_json_gives_identical_transform() -> None:
    pre = Preprocessor.fit(mixed_frame(300, seed=1), MIXED, max_categories=2)
    copy = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    frame = mixed_frame(100, seed=3)
    assert copy.columns == pre.columns
    assert copy.feature_slices == pre.feature_slices
    np.testing.assert_array_equal(copy.transform(frame), pre.transform(frame))
    assert copy.to_dict() == pre.to_dict()


def test_robust_scaling_uses_median_and_iqr() -> None:
    values = np.arange(1.0, 102.0)  # median 51, IQR 50
    encoded = _encode(_numeric(values), [51.0, 101.0])
    np.testing.assert_allclose(encoded, [0.0, 50.0 / (50.0 / 1.349)], rtol=1e-6)


def test_robust_scaling_ignores_a_few_huge_outliers() -> None:
    clean = np.random.default_rng(0).normal(100.0, 5.0, 1000)
    dirty = np.concatenate([clean, [1e9, -1e9, 5e8, 1e12, 3e9]])
    probe = [90.0, 100.0, 110.0]
    np.testing.assert_allclose(_encode(_numeric(dirty), probe), _encode(_numeric(clean), probe), atol=0.03)


def test_huge_values_are_not_clipped() -> None:
    encoded = _encode(_numeric(np.arange(100.0)), [1e6])
    assert encoded[0] > 1e4


def test_zero_iqr_falls_back_to_std_then_to_one() -> None:
    spiky = np.array([0.0] * 95 + [10.0] * 5)
    np.testing.assert_allclose(_encode(_numeric(spiky), [10.0]), [10.0 / np.std(spiky)], rtol=1e-6)
    np.testing.assert_allclose(_encode(_numeric([3.0] * 50), [3.0, 5.0]), [0.0, 2.0])


def test_unit_range_maps_percentiles_to_zero_and_one_without_clipping() -> None:
    values = np.linspace(0.0, 100.0, 10001)
    encoded = _encode(_numeric(values, unit_range=True), [1.0, 99.0, 200.0])
    np.testing.assert_allclose(encoded, [0.0, 1.0, 200.0 / 98.0 - 1.0 / 98.0], atol=1e-5)
    np.testing.assert_allclose(_encode(_numeric([7.0] * 40, unit_range=True), [7.0, 8.0]), [0.0, 1.0])


def test_missing_optional_values_get_the_fill_and_an_indicator() -> None:
    schema = Schema((
        Feature("x", "numeric", optional=True),
        Feature("b", "boolean", optional=True),
        Feature("c", "categorical", optional=True),
    ))
    fit_frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, None], "b": [True, False, None, True], "c": ["a", None, "b", "a"]})
    pre = Preprocessor.fit(fit_frame, schema)
    assert pre.columns == [
        "x", "x__missing", "b", "b__missing", "c=a", "c=b", "c=__unseen__", "c=__missing__",
    ]
    row = pre.transform(pd.DataFrame({"x": [np.nan], "b": [None], "c": [None]}))[0]
    np.testing.assert_array_equal(row, [0.0, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 1.0])
    present = pre.transform(pd.DataFrame({"x": [2.0], "b": [True], "c": ["b"]}))[0]
    np.testing.assert_array_equal(present, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    assert not pre.unseen_mask(pd.DataFrame({"x": [np.nan], "b": [None], "c": [None]})).any()


def test_unseen_category_lights_unseen_column_and_mask() -> None:
    pre = Preprocessor.fit(mixed_frame(200, seed=1), MIXED)
    frame = mixed_frame(3, seed=2)
    frame["region"] = ["eu", "mars", "asia"]
    encoded = pre.transform(frame)
    unseen_col = pre.columns.index("region=__unseen__")
    np.testing.assert_array_equal(encoded[:, unseen_col], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(encoded[:, pre.feature_slices["region"]].sum(axis=1), [1.0, 1.0, 1.0])
    mask = pre.unseen_mask(frame)
    assert mask.shape == (3, 5)
    np.testing.assert_array_equal(mask[:, 3], [False, True, False])
    assert not mask[:, [0, 1, 2, 4]].any()
    assert pre.transform(mixed_frame(200, seed=1))[:, unseen_col].max() == 0.0


def test_a_value_seen_in_under_a_thousandth_of_the_rows_is_rare_not_unseen() -> None:
    """3xx in 0.3 % of the rows is a normal level; a value seen twice in 10,000 rows is marked rare, and the
    marker survives the model's JSON."""
    values = ["2xx"] * 9968 + ["3xx"] * 30 + ["4xx"] * 2
    schema = Schema((Feature("status", "categorical"),))
    pre = Preprocessor.fit(pd.DataFrame({"status": values}), schema)
    frame = pd.DataFrame({"status": ["2xx", "3xx", "4xx", "5xx"]})
    for fitted in (pre, Preprocessor.from_dict(pre.to_dict())):
        np.testing.assert_array_equal(fitted.rare_mask(frame)[:, 0], [False, False, True, False])
        np.testing.assert_array_equal(fitted.unseen_mask(frame)[:, 0], [False, False, False, True])
    old = pre.to_dict()
    for state in old["states"].values():
        state.pop("rare")                                  # a model saved before rare values were kept
    assert not Preprocessor.from_dict(old).rare_mask(frame).any()


def test_rare_categories_fold_into_other_and_are_not_unseen() -> None:
    values = ["a"] * 10 + ["b"] * 5 + ["c"] * 2 + ["d"]
    schema = Schema((Feature("c", "categorical"),))
    pre = Preprocessor.fit(pd.DataFrame({"c": values}), schema, max_categories=2)
    assert pre.columns == ["c=a", "c=b", "c=__other__", "c=__unseen__"]
    probe = pd.DataFrame({"c": ["d", "c", "z"]})
    np.testing.assert_array_equal(pre.transform(probe), [[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(pre.unseen_mask(probe)[:, 0], [False, False, True])


def test_integral_float_and_int_categories_agree() -> None:
    schema = Schema((Feature("code", "categorical", optional=True),))
    pre = Preprocessor.fit(pd.DataFrame({"code": [200.0, 404.0, np.nan, 200.0]}), schema)
    assert pre.columns[:2] == ["code=200", "code=404"]
    np.testing.assert_array_equal(pre.transform(pd.DataFrame({"code": [404]}))[0], [0, 1, 0, 0])


def test_decode_inverts_scaling_and_picks_categories() -> None:
    frame = mixed_frame(200, seed=1)
    pre = Preprocessor.fit(frame, MIXED)
    decoded = pre.decode(pre.transform(frame))
    assert list(decoded.columns) == MIXED.names
    np.testing.assert_allclose(decoded["load"], frame["load"], rtol=1e-5)
    np.testing.assert_allclose(decoded["latency"], frame["latency"], rtol=1e-5)
    present = frame["errors"].notna()
    np.testing.assert_allclose(decoded["errors"][present], frame["errors"][present], rtol=1e-5)
    assert (decoded["region"] == frame["region"]).all()
    assert (decoded["busy"] == frame["busy"]).all()


def test_decode_never_answers_unseen() -> None:
    pre = Preprocessor.fit(mixed_frame(200, seed=1), MIXED)
    recon = np.zeros((1, pre.n_columns), dtype=np.float32)
    recon[0, pre.columns.index("region=__unseen__")] = 5.0
    recon[0, pre.columns.index("region=us")] = 0.2
    recon[0, pre.columns.index("busy")] = 0.49
    decoded = pre.decode(recon)
    assert decoded.loc[0, "region"] == "us"
    assert not decoded.loc[0, "busy"]


def test_missing_column_is_a_key_error_naming_it() -> None:
    pre = Preprocessor.fit(mixed_frame(100, seed=1), MIXED)
    with pytest.raises(KeyError, match="latency"):
        pre.transform(mixed_frame(10, seed=1).drop(columns=["latency"]))


def test_missing_value_in_required_feature_is_refused() -> None:
    frame = mixed_frame(100, seed=1)
    frame.loc[5, "load"] = np.nan
    with pytest.raises(ValueError, match="'load' is required but 1 of 100"):
        Preprocessor.fit(frame, MIXED)


def test_bad_boolean_value_is_refused() -> None:
    schema = Schema((Feature("b", "boolean"),))
    with pytest.raises(ValueError, match="'b' is boolean but holds 'maybe'"):
        Preprocessor.fit(pd.DataFrame({"b": [True, "maybe"]}), schema)


def test_empty_frame_transforms_to_zero_rows() -> None:
    pre = Preprocessor.fit(mixed_frame(100, seed=1), MIXED)
    empty = mixed_frame(100, seed=1).iloc[:0]
    assert pre.transform(empty).shape == (0, pre.n_columns)
    assert pre.unseen_mask(empty).shape == (0, 5)
    assert len(pre.decode(pre.transform(empty))) == 0


def test_transform_is_vectorised() -> None:
    frame = mixed_frame(100_000, seed=4)
    pre = Preprocessor.fit(frame, MIXED)
    started = time.perf_counter()
    pre.transform(frame)
    pre.unseen_mask(frame)
    assert time.perf_counter() - started < 2.0


def test_numeric_block_path_matches_the_column_path_and_leaves_the_frame_alone() -> None:
    rng = np.random.default_rng(4)
    schema = Schema((*[Feature(f"n{i}", "numeric") for i in range(5)], Feature("opt", "numeric", optional=True)))
    frame = pd.DataFrame(rng.normal(size=(200, 5)) * 10, columns=[f"n{i}" for i in range(5)])
    frame["opt"] = np.where(rng.random(200) < 0.1, np.nan, rng.normal(size=200))
    frame.loc[3, "n2"] = 1e12                                    # clipped on both paths
    pre = Preprocessor.fit(frame, schema)
    before = frame.copy()
    fast = pre.transform(frame)                                  # plain numeric columns: one block
    pd.testing.assert_frame_equal(frame, before)
    slow = pre.transform(frame.astype({"n0": object}))          # an object column: column by column
    np.testing.assert_array_equal(fast, slow)
    numeric_only = Schema(schema.features[:5])
    pre5 = Preprocessor.fit(frame, numeric_only)
    np.testing.assert_array_equal(pre5.transform(frame), pre5.transform(frame.astype({"n4": object})))
    decoded = pre5.decode(pre5.transform(frame))
    assert list(decoded.columns) == numeric_only.names
    np.testing.assert_allclose(decoded["n1"], frame["n1"], rtol=1e-5, atol=1e-4)
    # a missing required value still names its feature
    broken = frame.copy()
    broken.loc[7, "n3"] = np.nan
    with pytest.raises(ValueError, match="'n3'"):
        pre.transform(broken)
