"""NAB through the daemon's own loop: every series replayed with `vigil replay`'s machinery, scored by NAB's rules.

Run from the repository root: `.venv/bin/python bench/nab_replay.py` (all 58 series, the configurations
below, two processes; writes bench/results/nab_replay.md). `--configs`, `--series N` (the first N files),
`--half development|confirmation` and `--jobs` select less; a partial run prints its tables and writes only
with `--output`.

Each series is one detector (one numeric feature, `value`) replayed as the daemon would have run it: its
first model trains when the window holds the series' probationary rows (NAB's first 15 %, which NAB does not
score), then it retrains on `training.interval` of the records' time over a `training.window` of the newest
records less the flagged ones, and every record is scored by the model active when it arrived: nothing is
learned from a point before it is scored (the probationary rows aside). Two figures per profile:

* **own flags**: the records the daemon flagged (`is_outlier`), the daemon's real behaviour;
* **optimised**: NAB's threshold sweep over a normalised score, score / threshold of the model that scored the
  record, squashed into [0, 1) as r / (1 + r) (the leaderboard's terms).

Beside them, in the same run, the rolling z-score over the previous day of points (`bench/nab.py`).
Configurations are compared on the odd-numbered files (in name order) and confirmed on the even-numbered ones;
both halves are reported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if __package__ in (None, ""):                 # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from bench.nab import (
    DEFAULT_WINDOW,
    PROFILES,
    NabResult,
    Series,
    load_corpus,
    optimise_threshold,
    probation_length,
    rolling_zscore,
    score_detections,
    zscore_flags,
    zscore_to_nab,
)

REPO = Path(__file__).resolve().parents[1]
TRAINING = {"interval": "1d", "window": "7d"}
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "window16": {"model": {"window": 16, "arch": "conv"}},
    "time": {"model": {"time_features": True}},
    # for a lone metric, where NAB's profiles weigh a false alarm against a ninth to a half of a detection
    "strict": {"threshold": {"target_fpr": 0.001}},
    "adapt": {"training": {"readmit_flagged_share": 0.05}},
    "strict-adapt": {"threshold": {"target_fpr": 0.001}, "training": {"readmit_flagged_share": 0.05}},
}
HALVES = ("development", "confirmation")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def config_text(probation: int, overrides: Mapping[str, Mapping[str, Any]]) -> str:
    """A config with one detector, `nab`: one numeric feature, the first model after `probation` records."""
    sections: dict[str, dict[str, Any]] = {
        "model": {"device": "cpu", **overrides.get("model", {})},
        "training": {**TRAINING, "min_records": max(32, probation), **overrides.get("training", {})},
        "threshold": dict(overrides.get("threshold", {})),
    }
    lines = ["[daemon]", 'state_dir = "state"', "torch_threads = 1", "",
             "[detectors.nab]", 'source = { type = "http" }', 'ts_field = "timestamp"', "",
             "[detectors.nab.features]", 'value = "numeric"', ""]
    for name, values in sections.items():
        if values:
            lines.append(f"[detectors.nab.{name}]")
            lines += [f"{key} = {_toml(v)}" for key, v in values.items()]
            lines.append("")
    return "\n".join(lines)


def replay_series(args: tuple[str, Series, dict[str, dict[str, Any]]]) -> tuple[str, np.ndarray, np.ndarray, float]:
    """Replay one series; its flags, its normalised scores in [0, 1) and the seconds it took."""
    import torch

    from detector.config import load_config
    from detector.offline.replay import replay_records

    torch.set_num_threads(1)
    name, series, overrides = args
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vigil-nab-") as scratch:
        path = Path(scratch) / "config.toml"
        path.write_text(config_text(probation_length(len(series.values)), overrides), encoding="utf-8")
        config = load_config(path)
        stamps = pd.to_datetime(series.timestamps).tz_localize(UTC)
        raws = [{"timestamp": ts.isoformat(), "value": float(v)} for ts, v in zip(stamps, series.values, strict=True)]
        result = replay_records(config, "nab", raws, store_dir=Path(scratch))
    out = result.records
    if len(out) != len(series.values):
        raise RuntimeError(f"{name}: {len(out)} records replayed of {len(series.values)}")
    ratio = (out["score"] / out["threshold"]).to_numpy(dtype=np.float64, na_value=np.nan)
    ratio = np.where(np.isfinite(ratio), np.maximum(ratio, 0.0), 0.0)
    return name, out["is_outlier"].to_numpy(dtype=bool), ratio / (1.0 + ratio), time.perf_counter() - started


def run_config(corpus: Mapping[str, Series], overrides: dict[str, dict[str, Any]],
               jobs: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    tasks = [(name, series, overrides) for name, series in corpus.items()]
    flags, scores, seconds = {}, {}, 0.0
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for name, f, s, took in pool.map(replay_series, tasks):
            flags[name], scores[name], seconds = f, s, seconds + took
            print(f"  {name}: {int(f.sum())} flagged of {len(f)} ({took:.1f} s)", flush=True)
    return flags, scores, seconds


def figures(corpus: Mapping[str, Series], flags: Mapping[str, np.ndarray],
            scores: Mapping[str, np.ndarray]) -> dict[str, tuple[NabResult, NabResult]]:
    """Per profile: (own flags, optimised threshold)."""
    return {name: (score_detections(corpus, flags, profile), optimise_threshold(corpus, scores, profile)[1])
            for name, profile in PROFILES.items()}


def zscore_figures(corpus: Mapping[str, Series]) -> dict[str, tuple[NabResult, NabResult]]:
    z = {name: rolling_zscore(s.values, DEFAULT_WINDOW) for name, s in corpus.items()}
    return figures(corpus, {n: zscore_flags(v) for n, v in z.items()}, {n: zscore_to_nab(v) for n, v in z.items()})


def table(rows: Sequence[tuple[str, dict[str, tuple[NabResult, NabResult]]]]) -> str:
    head = "| method | " + " | ".join(f"{p} own flags | {p} optimised" for p in PROFILES) + " |"
    lines = [head, "|---" * (1 + 2 * len(PROFILES)) + "|"]
    for method, by_profile in rows:
        cells = []
        for profile in PROFILES:
            own, best = by_profile[profile]
            cells += [f"{own.score:.1f}", f"{best.score:.1f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
    parser.add_argument("--series", type=int, default=0, help="only the first N files (0: all)")
    parser.add_argument("--half", choices=HALVES, help="only the odd (development) or even (confirmation) files "
                                                      "in name order: choose configurations on one, confirm on the "
                                                      "other")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write the Markdown here (default for a full run: "
                                                    "bench/results/nab_replay.md)")
    args = parser.parse_args(argv)
    corpus = dict(sorted(load_corpus().items()))
    if args.series:
        corpus = dict(list(corpus.items())[: args.series])
    names = list(corpus)
    halves = {"development (odd files)": {n: corpus[n] for n in names[0::2]},
              "confirmation (even files)": {n: corpus[n] for n in names[1::2]}, "all": corpus}
    if args.half is not None:
        label = next(h for h in halves if h.startswith(args.half))
        corpus = halves[label]
        halves = {label: corpus}
    started = time.time()
    results: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]] = {}
    for config in args.configs.split(","):
        print(f"{config}:", flush=True)
        results[config] = run_config(corpus, CONFIGS[config], args.jobs)
    sections = []
    for half, part in halves.items():
        rows = [("rolling z-score (previous day)", zscore_figures(part))]
        for config, (flags, scores, _) in results.items():
            rows.append((f"vigil {config}", figures(part, {n: flags[n] for n in part}, {n: scores[n] for n in part})))
        sections.append(f"### {half}: {len(part)} series\n\n{table(rows)}\n")
        print(sections[-1], flush=True)
    if args.output is None and (args.series or args.half or args.configs != ",".join(CONFIGS)):
        return 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip()
    seconds = {c: round(r[2]) for c, r in results.items()}
    out = args.output or REPO / "bench" / "results" / "nab_replay.md"
    out.write_text(
        "# NAB through `vigil replay`\n\n"
        f"Command: `.venv/bin/python bench/nab_replay.py {' '.join(sys.argv[1:] if argv is None else argv)}`; "
        f"commit {commit}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.machine()}, {os.cpu_count()} CPUs, {args.jobs} "
        f"processes; wall time {(time.time() - started) / 60:.1f} min; replay seconds per configuration (summed "
        f"over series): {seconds}.\n\n"
        f"Training: {TRAINING}, first model after the probationary rows. Configurations (overrides of the "
        f"detector's sections): {json.dumps(CONFIGS)}.\n\n"
        "NAB scoreboard (numenta/NAB README) for comparison, standard / reward-low-FP / reward-low-FN: ARTime 74.9 / "
        "65.1 / 80.4; Numenta HTM 70.5 / 62.6 / 75.2; CAD OSE 69.9 / 67.0 / 73.2; earthgecko Skyline 58.2 / 46.2 / "
        "63.9; KNN CAD 58.0 / 43.4 / 64.8; Random Cut Forest 51.7 / 38.4 / 59.7.\n\n" + "\n".join(sections),
        encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
