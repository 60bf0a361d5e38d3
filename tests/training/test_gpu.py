"""The CUDA path: training on the GPU with device "auto", every variant and sequence mode, and scoring on the
GPU agreeing with scoring on the CPU. Skipped where torch sees no CUDA device (CI has none)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from training.choices import VARIANTS
from training.fit import KEY_COLUMN, TS_COLUMN, fit_model
from training.fitted import FittedModel
from training.loop import TrainSettings
from training.schema import Schema
from training.settings import ModelSettings, ThresholdSettings

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is not tested")]


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame({"x": a, "y": 2 * a + rng.normal(0, 0.05, n), "z": rng.normal(size=n)})


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_runs_on_cuda_and_scores_match_the_cpu(variant: str) -> None:
    frame = _frame(2000, 0)
    model = fit_model(frame, Schema.infer(frame), ModelSettings(hidden=(32, 16), latent=4, variant=variant),
                      TrainSettings(epochs=20, device="auto", seed=0), ThresholdSettings(calibration_folds=1))
    assert model.report["device"].startswith("cuda")
    assert next(model.network.parameters()).device.type == "cpu"        # kept on the CPU for scoring
    test = _frame(300, 1)
    test.loc[:9, "y"] += 3.0                                              # 60 noise sigmas off the relation
    on_cpu = model.score(test)
    on_gpu = model.score(test, device="cuda")
    np.testing.assert_allclose(on_gpu.scores, on_cpu.scores, rtol=1e-3, atol=1e-6)
    assert on_cpu.is_outlier[:10].all()
    weights, meta = model.to_artifact()
    np.testing.assert_allclose(FittedModel.from_artifact(weights, meta).score(test).scores, on_cpu.scores,
                               rtol=1e-6)


@pytest.mark.parametrize("arch", ["conv", "lstm"])
def test_sequence_models_train_on_cuda(arch: str) -> None:
    n = 1500
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"v": np.sin(np.arange(n) / 15) + 0.02 * rng.normal(size=n),
                          TS_COLUMN: pd.date_range("2026-01-01", periods=n, freq="5min", tz="UTC"),
                          KEY_COLUMN: "k"})
    model = fit_model(frame, Schema.infer(frame[["v"]]), ModelSettings(hidden=(16,), latent=4, window=12, arch=arch),
                      TrainSettings(epochs=15, device="cuda", seed=0), ThresholdSettings(calibration_folds=1))
    assert model.report["device"].startswith("cuda")
    tail = frame.tail(200).reset_index(drop=True)
    tail.loc[150, "v"] += 3.0
    scores = model.score(tail).scores
    assert int(np.argmax(scores)) == 150


def test_confirmed_outliers_score_the_same_on_cuda() -> None:
    frame = _frame(2000, 3)
    confirmed = _frame(12, 4)
    confirmed["y"] -= 1.5                                                 # one kind of incident
    model = fit_model(frame, Schema.infer(frame), ModelSettings(hidden=(32, 16), latent=4),
                      TrainSettings(epochs=20, device="auto", seed=0), ThresholdSettings(calibration_folds=1),
                      confirmed=confirmed)
    assert model.report["scoring"]["confirmed_outliers"] == 12
    probe = pd.concat([_frame(200, 5), confirmed.iloc[:3] + 0.01], ignore_index=True)
    on_cpu, on_gpu = model.score(probe), model.score(probe, device="cuda")
    np.testing.assert_allclose(on_gpu.scores, on_cpu.scores, rtol=1e-3, atol=1e-6)
    assert on_gpu.is_outlier[-3:].all()
