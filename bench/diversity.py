"""Benchmark: the diversity report on a 100k x 50 window against training the default model on it.

Run from the repository root: `.venv/bin/python bench/diversity.py`. Prints a Markdown table and writes it to
bench/results/diversity.md.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from training.diversity import DiversityReport, check_window
from training.fit import fit_model
from training.loop import TrainSettings
from training.model import AutoencoderSpec, count_parameters
from training.schema import Schema
from training.settings import ModelSettings

N_ROWS = 100_000
N_NUMERIC, N_CATEGORICAL, N_BOOLEAN = 40, 8, 2
EPOCHS = 10
REPEATS = 3
MODEL = ModelSettings(hidden=(32, 16), latent=4)
TRAIN = TrainSettings(epochs=EPOCHS, device="cpu")
COMMAND = ".venv/bin/python bench/diversity.py"
RESULTS = Path(__file__).parent / "results" / "diversity.md"
LOADINGS = np.random.default_rng(0).normal(size=(5, N_NUMERIC))


def window(n: int, seed: int, start: str) -> tuple[pd.DataFrame, pd.Series[Any]]:
    """n records every 6 s (about 7 days for 100k): numeric features from 5 factors plus noise,
    categoricals with 5 values, booleans; the same distribution for every seed."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(n, 5)) @ LOADINGS + 0.3 * rng.normal(size=(n, N_NUMERIC)) + 10.0
    columns: dict[str, Any] = {f"x{i}": numeric[:, i] for i in range(N_NUMERIC)}
    values = np.array(["a", "b", "c", "d", "e"], dtype=object)
    for i in range(N_CATEGORICAL):
        columns[f"c{i}"] = values[rng.integers(0, 5, n)]
    for i in range(N_BOOLEAN):
        columns[f"b{i}"] = rng.random(n) < 0.3
    timestamps = pd.Series(pd.date_range(start, periods=n, freq="6s", tz="UTC"))
    return pd.DataFrame(columns), timestamps


def best_report_time(frame: pd.DataFrame, schema: Schema, timestamps: pd.Series[Any],
                     history: pd.DataFrame, n_parameters: int) -> tuple[float, DiversityReport]:
    keys = pd.Series(["host-1", "host-2"] * (len(frame) // 2), dtype=object)
    best, report = float("inf"), DiversityReport(())
    for _ in range(REPEATS):
        started = time.perf_counter()
        report = check_window(frame, schema, n_parameters=n_parameters, timestamps=timestamps, keys=keys,
                              expected_span_s=7 * 86400.0, history=history, excluded=100)
        best = min(best, time.perf_counter() - started)
    return best, report


def main() -> None:
    torch.set_num_threads(1)
    frame, timestamps = window(N_ROWS, seed=1, start="2024-02-01")
    history = window(N_ROWS, seed=2, start="2024-01-01")[0]
    schema = Schema.infer(frame)
    started = time.perf_counter()
    fitted = fit_model(frame, schema, MODEL, TRAIN)
    fit_s = time.perf_counter() - started
    n_parameters = count_parameters(AutoencoderSpec.of(MODEL, fitted.preprocessor.n_columns))
    report_s, report = best_report_time(frame, schema, timestamps, history, n_parameters)
    epochs = int(fitted.report["epochs_run"])
    loop_s = float(fitted.report["seconds"])
    lines = [
        "# Diversity report vs training time",
        "",
        f"Window: {N_ROWS:,} rows x {N_NUMERIC + N_CATEGORICAL + N_BOOLEAN} features ({N_NUMERIC} numeric, "
        f"{N_CATEGORICAL} categorical with 5 values, {N_BOOLEAN} boolean), timestamps every 6 s (about 7 days), "
        f"two keys, a {N_ROWS:,}-row history. Model: hidden={MODEL.hidden}, latent={MODEL.latent}, "
        f"{fitted.preprocessor.n_columns} encoded columns, {n_parameters:,} parameters; "
        f"TrainSettings(epochs={EPOCHS}, device=\"cpu\"), batch size {TRAIN.batch_size}. torch.set_num_threads(1).",
        "",
        "| diversity report (s, best of 3) | training: fit_model (s) | epochs run | training loop (s) "
        "| s per epoch | report / fit_model |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {report_s:.3f} | {fit_s:.2f} | {epochs} | {loop_s:.2f} | {loop_s / epochs:.3f} "
        f"| {report_s / fit_s:.3f} ({100 * report_s / fit_s:.1f} %) |",
        "",
        f"Report: status {report.status}, {len(report.checks)} checks, {len(report.problems)} not ok. "
        "fit_model includes preprocessing and the threshold fit; the training loop column is its own timer "
        "(report['seconds']). The training time is one run.",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs (os.cpu_count()), "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"pandas {pd.__version__}.",
        "",
        f"Command: `{COMMAND}`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
