"""Hybrid scoring with confirmed outliers: records like a confirmed one score higher, the rest do not move."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from training.fit import MAX_INCIDENTS, fit_model
from training.fitted import FittedModel
from training.loop import TrainSettings
from training.memory import nearest_distance
from training.schema import Feature, Schema
from training.settings import ModelSettings

COLUMNS = [f"f{i}" for i in range(6)]
SCHEMA = Schema(tuple(Feature(c, "numeric") for c in COLUMNS))
TRAIN = TrainSettings(seed=0, epochs=25, device="cpu")


def normal(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    x[:, 1] = 2.0 * x[:, 0] + 0.1 * rng.normal(size=n)
    return pd.DataFrame(x, columns=COLUMNS)


def incident(n: int, seed: int) -> pd.DataFrame:
    """Records of one kind of incident: f0 and f1 break their relation, close together."""
    rng = np.random.default_rng(seed)
    x = 0.3 * rng.normal(size=(n, 6))
    x[:, 0] += 1.0
    x[:, 1] -= 1.0
    return pd.DataFrame(x, columns=COLUMNS)


@pytest.fixture(scope="module")
def models() -> tuple[FittedModel, FittedModel]:
    train = normal(1500, 0)
    return (fit_model(train, SCHEMA, ModelSettings(), TRAIN),
            fit_model(train, SCHEMA, ModelSettings(), TRAIN, confirmed=incident(15, 1)))


def test_records_like_a_confirmed_outlier_score_higher(models: tuple[FittedModel, FittedModel]) -> None:
    plain, reviewed = models
    assert plain.report["scoring"]["confirmed_outliers"] == 0
    assert reviewed.report["scoring"] == reviewed.report["scoring"] | {"confirmed_outliers": 15, "review_weight": 4.0}
    same_kind = incident(200, 2)
    before, after = plain.score(same_kind).scores, reviewed.score(same_kind).scores
    assert np.all(after >= before - 1e-9)
    assert np.median(after - before) > 1.0
    # scored without them, the same model gives the scores of one fitted without reviews
    assert np.allclose(reviewed.score(same_kind, reviews=False).scores, before)
    # the incident kind is found more often at the refitted threshold
    assert np.mean(after > reviewed.threshold.value) > np.mean(before > plain.threshold.value)


def test_normal_records_keep_their_false_positive_rate(models: tuple[FittedModel, FittedModel]) -> None:
    _, reviewed = models
    fresh = normal(4000, 3)
    rate = float(np.mean(reviewed.score(fresh).is_outlier))
    assert 0.004 <= rate <= 0.02


def test_unrelated_anomaly_scores_as_without_reviews(models: tuple[FittedModel, FittedModel]) -> None:
    plain, reviewed = models
    far = pd.DataFrame(np.full((3, 6), -6.0), columns=COLUMNS)
    assert np.allclose(plain.score(far).scores, reviewed.score(far).scores)


def test_confirmed_outliers_survive_the_artifact(models: tuple[FittedModel, FittedModel]) -> None:
    _, reviewed = models
    weights, meta = reviewed.to_artifact()
    back = FittedModel.from_artifact(weights, meta)
    assert back.incidents is not None and tuple(back.incidents.shape) == (15, 6)
    probe = pd.concat([incident(20, 4), normal(20, 5)], ignore_index=True)
    assert np.array_equal(back.score(probe).scores, reviewed.score(probe).scores)


def test_weight_zero_or_non_hybrid_scores_ignore_them() -> None:
    train, confirmed = normal(600, 6), incident(10, 7)
    off = fit_model(train, SCHEMA, replace(ModelSettings(), review_weight=0.0), TRAIN, confirmed=confirmed)
    recon = fit_model(train, SCHEMA, ModelSettings(score="reconstruction"), TRAIN, confirmed=confirmed)
    for model in (off, recon):
        assert model.incidents is None and model.report["scoring"]["confirmed_outliers"] == 0
        assert model.scoring.review_weight == 0.0
    with pytest.raises(ValueError, match="review_weight"):
        ModelSettings(review_weight=-1.0)


def test_only_the_newest_are_kept() -> None:
    confirmed = incident(MAX_INCIDENTS + 7, 8)
    model = fit_model(normal(300, 9), SCHEMA, ModelSettings(), replace(TRAIN, epochs=2), confirmed=confirmed)
    assert model.incidents is not None and model.incidents.shape[0] == MAX_INCIDENTS
    newest = torch.from_numpy(model.inputs(confirmed.iloc[-1:]))
    assert float(nearest_distance(newest, model.incidents)[0]) == pytest.approx(0.0, abs=1e-3)
    oldest = torch.from_numpy(model.inputs(confirmed.iloc[:1]))
    assert float(nearest_distance(oldest, model.incidents)[0]) > 0.0


def test_nearest_distance_matches_cdist() -> None:
    gen = torch.Generator().manual_seed(0)
    q, bank = torch.randn(700, 5, generator=gen), torch.randn(40, 5, generator=gen)
    expected = torch.cdist(q, bank).amin(dim=1)
    assert torch.allclose(nearest_distance(q, bank), expected, atol=1e-4)
    with pytest.raises(ValueError, match="bank"):
        nearest_distance(q, torch.empty(0, 5))
