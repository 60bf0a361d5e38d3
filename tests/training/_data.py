"""Synthetic data for the training tests: features driven by a few latent factors, plus noise."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.schema import Feature, Schema

N_FEATURES = 6


def loadings(seed: int = 0) -> npt.NDArray[np.float64]:
    """The fixed [2, N_FEATURES] mixing matrix of the correlated data."""
    return np.random.default_rng(seed).normal(size=(2, N_FEATURES))


def correlated_frame(n: int, seed: int, noise: float = 0.1) -> pd.DataFrame:
    """n rows of 6 numeric features f0..f5 driven by 2 latent factors (same loadings for every seed)."""
    rng = np.random.default_rng(seed + 1000)
    values = rng.normal(size=(n, 2)) @ loadings() + noise * rng.normal(size=(n, N_FEATURES))
    return pd.DataFrame(values, columns=[f"f{i}" for i in range(N_FEATURES)])


# the schema of mixed_frame's columns (its `note` column is left out: it must be ignored)
MIXED = Schema((
    Feature("load", "numeric"),
    Feature("latency", "numeric"),
    Feature("errors", "numeric", optional=True),
    Feature("region", "categorical"),
    Feature("busy", "boolean"),
))


def mixed_frame(n: int, seed: int) -> pd.DataFrame:
    """Numeric, optional numeric (10 % missing), categorical and boolean columns that depend on each other."""
    rng = np.random.default_rng(seed)
    load = rng.normal(10.0, 2.0, n)
    region = rng.choice(["eu", "us", "asia"], n, p=[0.5, 0.3, 0.2])
    latency = 5.0 * load + np.where(region == "asia", 40.0, 0.0) + rng.normal(0, 1.0, n)
    errors = np.where(rng.random(n) < 0.1, np.nan, 0.5 * load + rng.normal(0, 0.2, n))
    return pd.DataFrame({
        "load": load,
        "latency": latency,
        "errors": errors,
        "region": region,
        "busy": load > 10.0,
        "note": ["x"] * n,  # not in the schema: must be ignored
    })


def auc(negatives: npt.NDArray[np.float64], positives: npt.NDArray[np.float64]) -> float:
    """ROC-AUC by the rank formula: P(score of a positive > score of a negative), ties count half."""
    ranks = pd.Series(np.concatenate([negatives, positives])).rank().to_numpy()
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
