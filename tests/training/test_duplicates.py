"""Exact duplicate rows in the training window (an idle host reporting the same values) must not make
every record a hair away from them an outlier: a bank row with k or more twins has a k-th distance of 0,
and the density ratio used to divide by it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from training.fit import fit_model
from training.loop import TrainSettings
from training.memory import NeighborMemory
from training.schema import Schema
from training.settings import ModelSettings


def _window(n: int, seed: int, idle_share: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame({"x": a + rng.normal(0, 0.1, n), "y": 2 * a + rng.normal(0, 0.1, n),
                          "z": b + rng.normal(0, 0.1, n)})
    frame.iloc[: int(idle_share * n)] = 0.0    # idle records: exactly the same values
    return frame


def test_density_ratio_near_a_block_of_duplicates_stays_bounded() -> None:
    x = np.array([[0.0, 0.0]] * 5 + [[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-2.0, 1.0]], dtype=np.float32)
    memory, _ = NeighborMemory.build(x, k=2, size=100, seed=0)
    near = memory.query(torch.tensor([[0.1, 0.0]]))
    # the query is closer to the data than [1, 0], a bank row (it scored 1e11 when dividing by 0 + 1e-12)
    assert float(near.density[0]) < 100.0


def test_records_next_to_idle_duplicates_are_not_all_outliers() -> None:
    train = _window(800, 0, idle_share=0.3)
    settings = TrainSettings(epochs=30, batch_size=64, learning_rate=3e-3, patience=30, device="cpu", seed=0)
    model = fit_model(train, Schema.infer(train), ModelSettings(hidden=(16,), latent=2), settings)
    almost_idle = pd.DataFrame(np.full((50, 3), 0.01), columns=["x", "y", "z"])   # noise is 0.1
    result = model.score(almost_idle)
    assert float(np.mean(result.is_outlier)) <= 0.1
