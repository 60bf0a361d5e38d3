"""The exceptions the training library raises on purpose, one tree under TrainingError."""

from __future__ import annotations

import logging

__all__ = ["ArtifactError", "DivergedError", "InsufficientDataError", "TrainingError"]

logger = logging.getLogger(__name__)


class TrainingError(Exception):
    """Base for every error the training library raises on purpose."""


class ArtifactError(TrainingError):
    """A model artifact that cannot be interpreted: unknown format, missing parts, bad weights."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"Invalid model artifact: {problem}")
        self.problem = problem


class InsufficientDataError(TrainingError):
    """Too few rows to fit a model or one of its parts."""

    def __init__(self, n_given: int, n_needed: int, what: str = "training") -> None:
        super().__init__(f"Not enough rows for {what}: got {n_given}, need at least {n_needed}")
        self.n_given = n_given
        self.n_needed = n_needed
        self.what = what


class DivergedError(TrainingError):
    """The loss became NaN or infinite during training."""

    def __init__(self, epoch: int, which: str, value: float) -> None:
        super().__init__(
            f"Training diverged at epoch {epoch}: {which} loss is {value}; "
            "lower the learning rate or check the input for extreme values"
        )
        self.epoch = epoch
        self.which = which
        self.value = value
