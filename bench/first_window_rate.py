"""The first model's realised false-positive rate on fresh normal data, with the first-window trim.

Run from the repository root: `.venv/bin/python bench/first_window_rate.py` (writes
bench/results/first_window_rate.md). For each of the four generators of
tests/training/test_first_window_rate.py and seeds 0-4: a first model on 3,000 rows with the daemon's
first-window trim (2 %) and wide scale (training.first_window_wide_share, 0.2), default settings otherwise, 1 %
target; 40,000 fresh rows from the same generator scored.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import platform
import subprocess

import numpy as np

from tests.training.test_first_window_rate import MIXED, daily, latencies, low_rank, mixed, numeric
from training.fit import fit_model
from training.loop import TrainSettings
from training.settings import FIRST_WINDOW_WIDE_SHARE, ModelSettings, ThresholdSettings

REPO = Path(__file__).resolve().parents[1]
SEEDS = range(5)


def main() -> int:
    rows = []
    for generate in (low_rank, mixed, latencies, daily):
        rates = []
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            window, fresh = generate(3000, rng), generate(40_000, rng)
            schema = MIXED if generate is mixed else numeric(window)
            first = ModelSettings(wide_share=FIRST_WINDOW_WIDE_SHARE)      # as the daemon fits a first window
            fitted = fit_model(window, schema, first, TrainSettings(seed=seed), ThresholdSettings(target_fpr=0.01),
                               trim_fraction=0.02)
            rates.append(float(np.mean(fitted.score(fresh).is_outlier)))
            print(generate.__name__, seed, f"{rates[-1]:.2%}", flush=True)
        inside = sum(0.005 <= r <= 0.015 for r in rates)
        rows.append(f"| {generate.__name__} | " + " | ".join(f"{r:.2%}" for r in rates)
                    + f" | {inside} of {len(rates)} |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip()
    table = "\n".join(["| generator | " + " | ".join(f"seed {s}" for s in SEEDS) + " | in 0.5-1.5 % |",
                       "|---" * (len(SEEDS) + 2) + "|", *rows])
    print(table)
    (REPO / "bench" / "results" / "first_window_rate.md").write_text(
        "# First model's false-positive rate on fresh data (first-window trim 2 %, wide scale 0.2, target 1 %)\n\n"
        f"Command: `.venv/bin/python bench/first_window_rate.py`; commit {commit}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs. 3,000 training rows, 40,000 fresh rows per run.\n\n" + table + "\n",
        encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
