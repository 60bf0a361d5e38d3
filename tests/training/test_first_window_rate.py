"""The first model's false-positive rate on fresh normal data, with the first-window trim (issue 26).

The trim drops a window's clear outliers before the model is fitted again; it used to calibrate the refitted
threshold on the kept rows alone, cutting the top of a heavy-tailed or lumpy normal distribution out of the
sample, and fresh normal data then crossed the threshold 1.2-1.6 times as often as promised. The trimmed rows
that the refitted model (which never trained on them) does not find far out now rejoin the calibration, and
of those beyond the cut as many as half the target rate of the window.

Four generators (a low-rank numeric one, mixed types with a 1 % level, heavy tails, a daily cycle), a first
model on 3,000 rows with the daemon's first-window trim and wide scale, 40,000 fresh rows. Seeds 0-4 of each gave
0.70-1.54 % at a 1 % target, 19 of 20 within 0.5-1.5 % (bench/results/first_window_rate.md, 22984a7; with the
trim alone 0.69-1.47 %); the test runs seed 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from training.fit import fit_model
from training.loop import TrainSettings
from training.schema import Feature, Schema
from training.settings import FIRST_WINDOW_WIDE_SHARE, ModelSettings, ThresholdSettings

Generator = Callable[[int, np.random.Generator], pd.DataFrame]


def numeric(frame: pd.DataFrame) -> Schema:
    return Schema(tuple(Feature(str(c), "numeric") for c in frame.columns))


def low_rank(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """8 numbers driven by 3 latent factors (fixed loadings), plus noise."""
    loadings = np.random.default_rng(123).normal(size=(3, 8))
    values = rng.normal(size=(n, 3)) @ loadings + 0.2 * rng.normal(size=(n, 8))
    return pd.DataFrame(values, columns=[f"f{i}" for i in range(8)])


MIXED = Schema((Feature("load", "numeric"), Feature("latency", "numeric"), Feature("errors", "numeric", optional=True),
                Feature("region", "categorical"), Feature("busy", "boolean")))


def mixed(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Numbers, an optional number (10 % missing), a region with a 1 % level whose latency is far higher, a boolean."""
    load = rng.normal(10, 2, n)
    region = rng.choice(["eu", "us", "asia", "mars"], n, p=[0.5, 0.3, 0.19, 0.01])
    latency = 5 * load + np.where(region == "asia", 40, 0) + np.where(region == "mars", 80, 0) + rng.normal(0, 1, n)
    errors = np.where(rng.random(n) < 0.1, np.nan, 0.5 * load + rng.normal(0, 0.2, n))
    return pd.DataFrame({"load": load, "latency": latency, "errors": errors, "region": region,
                         "busy": load + rng.normal(0, 0.5, n) > 10})


def latencies(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Heavy-tailed service metrics: log-normal latencies with a Pareto tail, log-normal bytes, Poisson counts."""
    base = rng.lognormal(3.0, 0.8, n)
    return pd.DataFrame({"p50": base, "p99": base * (1 + rng.pareto(2.5, n)), "bytes": rng.lognormal(8, 1.2, n),
                         "conns": rng.poisson(20 + base / 10).astype(float)})


def daily(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A daily cycle of load, CPU following it, latency rising with its square, memory on the cycle."""
    phase = 2 * np.pi * rng.uniform(0, 1, n)
    load = 100 + 60 * np.sin(phase) + rng.normal(0, 8, n)
    return pd.DataFrame({"load": load, "cpu": 10 + 0.5 * load + rng.normal(0, 3, n),
                         "lat": 20 + 0.002 * load ** 2 + rng.normal(0, 2, n),
                         "mem": 50 + 5 * np.cos(phase) + rng.normal(0, 1.5, n)})


@pytest.mark.slow
@pytest.mark.parametrize("generate", [low_rank, mixed, latencies, daily], ids=lambda g: g.__name__)
def test_a_trimmed_first_window_keeps_the_promised_rate(generate: Generator) -> None:
    rng = np.random.default_rng(1)
    window, fresh = generate(3000, rng), generate(40_000, rng)
    schema = MIXED if generate is mixed else numeric(window)
    first = ModelSettings(wide_share=FIRST_WINDOW_WIDE_SHARE)      # as the daemon fits a first window
    fitted = fit_model(window, schema, first, TrainSettings(seed=1), ThresholdSettings(target_fpr=0.01),
                       trim_fraction=0.02)
    assert fitted.report["trimmed_rows"] > 0
    assert fitted.report["wide_scale"]["used"]
    if generate in (mixed, latencies):
        assert fitted.report["readmitted_rows"] > 0          # the rare level's and the tail's rows, not incidents
    rate = float(np.mean(fitted.score(fresh).is_outlier))
    assert 0.005 <= rate <= 0.015, f"realised false-positive rate {rate:.2%} at a 1 % target"
