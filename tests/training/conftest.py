"""Fixtures for the training tests: one CPU thread, and a model fitted once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.training._data import correlated_frame
from training.fit import fit_model
from training.fitted import FittedModel
from training.loop import TrainSettings
from training.schema import Schema
from training.settings import ModelSettings

FAST = TrainSettings(epochs=60, batch_size=128, learning_rate=3e-3, patience=8, device="cpu", seed=0)


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def correlated_model() -> FittedModel:
    """Fitted on 3000 rows of 6 features driven by 2 latent factors (seed 0)."""
    frame = correlated_frame(3000, seed=0)
    return fit_model(frame, Schema.infer(frame), ModelSettings(hidden=(32, 16), latent=2), FAST)
