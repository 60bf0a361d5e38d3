"""The hybrid score's wide scale (ModelSettings.wide_share, off by default): a window that holds an incident's
records still flags them, the distance is exact, and a stored model keeps it (or, stored before it, scores
without it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.training._data import auc
from tests.training.conftest import FAST
from training.fit import fit_model
from training.fitted import FittedModel
from training.memory import NeighborMemory, wide_positions
from training.schema import Feature, Schema
from training.sequence import TS_COLUMN
from training.settings import WIDE, ModelSettings

COLUMNS = [f"f{j}" for j in range(6)]
SCHEMA = Schema(tuple(Feature(name, "numeric") for name in COLUMNS))


def _normal(n: int, seed: int) -> pd.DataFrame:
    """Rows near a 2-D plane in 6 dimensions (what the network and the neighbours learn)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mix = np.random.default_rng(100).normal(size=(2, 6))
    return pd.DataFrame(latent @ mix + 0.1 * rng.normal(size=(n, 6)), columns=COLUMNS)


def _incident(n: int, seed: int) -> pd.DataFrame:
    """An incident's records: all alike (one state of a broken system), on the plane the normal rows span (so
    the autoencoder reconstructs them as well as normal rows) but far out in it, where no normal row lies."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(100).normal(size=(2, 6))
    centre = np.array([4.0, -4.0]) @ mix
    return pd.DataFrame(centre + 0.05 * rng.normal(size=(n, 6)), columns=COLUMNS)


@pytest.fixture(scope="module")
def contaminated() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A first window of 2,000 normal rows holding 40 records (2 %) of an incident, and fresh data of both."""
    window = pd.concat([_normal(2000, 0), _incident(40, 1)], ignore_index=True)
    return window, pd.concat([_normal(1000, 2), _incident(100, 3)], ignore_index=True)


def _fit(window: pd.DataFrame, share: float) -> FittedModel:
    """Fitted as a detector's first model is: screened by the first-window trim."""
    return fit_model(window, SCHEMA, ModelSettings(hidden=(16,), latent=2, wide_share=share), FAST, trim_fraction=0.02)


def test_an_incident_the_window_holds_is_still_flagged(contaminated: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    window, fresh = contaminated
    truth = np.r_[np.zeros(1000, bool), np.ones(100, bool)]
    wide = _fit(window, 0.2)
    local = _fit(window, 0.0)
    assert wide.scoring.wide_k == 400 and wide.scoring.wide_rows == 2000
    assert wide.report["wide_scale"] == {"k": 400, "rows": 2000, "used": True}
    assert local.scoring.wide_k == 0 and WIDE not in (local.scoring.normalizer or {})
    scored, plain = wide.score(fresh), local.score(fresh)
    # at the scale of 5 neighbours the incident's remembered records vouch for each other
    assert auc(plain.scores[~truth], plain.scores[truth]) < 0.9
    # at the wide scale they do not: every incident record scores above 99 % of fresh normal rows
    assert auc(scored.scores[~truth], scored.scores[truth]) > 0.99
    assert float(np.min(scored.scores[truth])) > float(np.quantile(scored.scores[~truth], 0.99))
    assert float(np.mean(scored.is_outlier[~truth])) < 0.03


def test_a_clean_window_scores_much_as_without_the_wide_scale() -> None:
    window = _normal(1500, 4)
    fresh = pd.concat([_normal(1000, 5), _incident(30, 6)], ignore_index=True)
    truth = np.r_[np.zeros(1000, bool), np.ones(30, bool)]
    for share in (0.2, 0.0):
        model = _fit(window, share)
        assert model.scoring.has_wide == (share > 0) == model.report["wide_scale"]["used"]
        result = model.score(fresh)
        assert auc(result.scores[~truth], result.scores[truth]) > 0.99
        assert float(np.mean(result.is_outlier[truth])) == 1.0
        assert float(np.mean(result.is_outlier[~truth])) < 0.03


def test_wide_distance_is_the_mean_over_the_nearest_of_evenly_spaced_rows() -> None:
    rng = np.random.default_rng(7)
    bank = torch.from_numpy(rng.normal(size=(500, 4)).astype(np.float32))
    memory = NeighborMemory(bank, torch.ones(500), 5)
    q = torch.from_numpy(rng.normal(size=(30, 4)).astype(np.float32))
    positions = wide_positions(500, 100)
    assert len(positions) == 100 and positions[0] == 0 and positions[-1] == 499
    assert np.all(np.diff(positions) > 0)
    brute = torch.cdist(q.double(), bank[positions].double())
    expected = brute.sort(dim=1).values[:, :10].mean(dim=1)
    got = memory.wide_distance(q, 100, 10)
    assert torch.allclose(got.double(), expected, atol=1e-4)
    # a row left out of its own query (its own copy, as calibration rows are scored)
    own = bank[positions[:3]]
    exclude = torch.from_numpy(positions[:3])
    left_out = memory.wide_distance(own, 100, 10, exclude)
    others = torch.cdist(own.double(), bank[positions].double())
    others[torch.arange(3), torch.arange(3)] = float("inf")
    assert torch.allclose(left_out.double(), others.sort(dim=1).values[:, :10].mean(dim=1), atol=1e-4)
    assert np.array_equal(wide_positions(50, 100), np.arange(50))
    with pytest.raises(ValueError, match="wide k"):
        memory.wide_distance(q, 100, 100)


def test_the_wide_scale_survives_the_artifact_and_older_artifacts_score_without_it(
    contaminated: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    window, fresh = contaminated
    model = _fit(window, 0.2)
    assert model.scoring.has_wide
    weights, meta = model.to_artifact()
    again = FittedModel.from_artifact(weights, meta)
    assert again.scoring == model.scoring
    np.testing.assert_array_equal(again.score(fresh).scores, model.score(fresh).scores)
    # a model stored before the wide scale existed: no wide_rows / wide_k, no WIDE normalizer
    scoring = dict(meta["scoring"])
    scoring.pop("wide_rows")
    scoring.pop("wide_k")
    scoring["normalizer"] = {k: v for k, v in scoring["normalizer"].items() if k != WIDE}
    old = FittedModel.from_artifact(weights, {**meta, "scoring": scoring})
    assert not old.scoring.has_wide
    result = old.score(fresh)
    assert result.components is not None and WIDE not in result.components
    assert np.all(np.isfinite(result.scores))


def test_sequence_models_calibrate_the_wide_scale_on_their_older_rows() -> None:
    rng = np.random.default_rng(8)
    n = 800
    ts = pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC")
    level = np.sin(np.arange(n) / 20.0)
    frame = pd.DataFrame({"f0": level + 0.05 * rng.normal(size=n), TS_COLUMN: ts})
    schema = Schema((Feature("f0", "numeric"),))
    model = fit_model(frame, schema, ModelSettings(hidden=(8,), latent=2, window=8, arch="conv", wide_share=0.2),
                      FAST)
    wide = model.report["wide_scale"]
    assert wide["used"] and model.scoring.has_wide and 0 < wide["k"] < wide["rows"] <= 2000
    assert model.val_scores is not None
    assert float(np.mean(model.val_scores > model.threshold.value)) <= 0.02
