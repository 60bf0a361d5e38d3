"""Explanations of flagged records (training.explain, issue 26): one feature moved by 6 standard deviations.

The expected value of a feature must show what normal records like this one hold, not follow the anomaly (a
reconstruction passed much of the moved value through: its "expected" value lay nearer the anomalous value
than the normal one in most records), and the features that are as expected are no cause.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.training._data import MIXED, correlated_frame, mixed_frame
from tests.training.conftest import FAST
from training.fit import fit_model
from training.fitted import FittedModel
from training.settings import ModelSettings

N = 200


def planted(model: FittedModel, train: pd.DataFrame, normal: pd.DataFrame, columns: list[str],
            seed: int) -> dict[str, Any]:
    """Move feature columns[i % len] of record i by 6 standard deviations (of the training window), up or down;
    score; measure the explanation of each."""
    rng = np.random.default_rng(seed)
    normal = normal.reset_index(drop=True).copy()
    moved_feature = [columns[i % len(columns)] for i in range(len(normal))]
    for i, name in enumerate(moved_feature):          # a missing value to move: take the median first
        if pd.isna(normal.at[i, name]):
            normal.at[i, name] = float(train[name].median())
    moved = normal.copy()
    spread = train[columns].std()
    for i, name in enumerate(moved_feature):
        moved.at[i, name] = normal.at[i, name] + rng.choice([-1.0, 1.0]) * 6.0 * spread[name]
    result = model.score(moved)
    rows = np.arange(len(moved))
    contributions, expected = result.contributions_at(rows), result.expected_at(rows).reset_index(drop=True)
    top = [result.feature_names[j] for j in contributions.argmax(axis=1)]
    nearer, equal_is_cause = [], 0
    for i, name in enumerate(moved_feature):
        e = float(expected.at[i, name])
        nearer.append(abs(e - normal.at[i, name]) < abs(e - moved.at[i, name]))
        for j, feature in enumerate(result.feature_names):
            same = expected.at[i, feature] == moved.at[i, feature] or (
                pd.isna(expected.at[i, feature]) and pd.isna(moved.at[i, feature]))
            if same and contributions[i, j] > 0:
                equal_is_cause += 1
    below = ~model.score(expected).is_outlier
    return {"flagged": result.is_outlier.mean(), "top": np.mean([t == m for t, m in zip(top, moved_feature,
                                                                                        strict=True)]),
            "nearer": np.mean(nearer), "expected_below": below.mean(), "equal_is_cause": equal_is_cause,
            "contributions_sum": np.allclose(contributions.sum(axis=1), result.scores, rtol=1e-9)}


def check(measured: dict[str, Any]) -> None:
    assert measured["flagged"] >= 0.9, measured
    assert measured["top"] >= 0.9, measured
    assert measured["nearer"] >= 0.9, measured
    assert measured["expected_below"] >= 0.95, measured
    assert measured["equal_is_cause"] == 0, measured
    assert measured["contributions_sum"], measured


def test_a_correlated_numeric_detector_explains_one_moved_feature(correlated_model: FittedModel) -> None:
    train = correlated_frame(3000, seed=0)
    check(planted(correlated_model, train, correlated_frame(N, seed=5), list(train.columns), seed=1))


@pytest.fixture(scope="module")
def mixed_model() -> FittedModel:
    """Fitted as a detector's first model: on 3,000 rows, screened by the first-window trim."""
    return fit_model(mixed_frame(3000, seed=0), MIXED, ModelSettings(hidden=(32, 16), latent=3), FAST,
                     trim_fraction=0.02)


def test_a_mixed_type_detector_explains_one_moved_feature(mixed_model: FittedModel) -> None:
    train = mixed_frame(3000, seed=0)
    check(planted(mixed_model, train, mixed_frame(N, seed=5), ["load", "latency", "errors"], seed=1))


def test_an_unseen_level_is_the_cause_and_its_expected_value_a_level_normal_records_like_it_have(
        mixed_model: FittedModel) -> None:
    frame = mixed_frame(20, seed=7).drop(columns=["note"])
    frame["region"] = "mars"
    result = mixed_model.score(frame)
    rows = np.arange(len(frame))
    contributions, expected = result.contributions_at(rows), result.expected_at(rows)
    assert result.is_outlier.all()
    assert [result.feature_names[j] for j in contributions.argmax(axis=1)] == ["region"] * len(frame)
    assert set(expected["region"]) <= {"eu", "us", "asia"}
    # latency follows the region (asia is 40 higher): the expected region is the one the latency says
    asia = (frame["latency"] - 5.0 * frame["load"]).to_numpy() > 20.0
    assert (expected["region"].to_numpy()[asia] == "asia").mean() >= 0.9
    assert (expected["region"].to_numpy()[~asia] != "asia").mean() >= 0.9
