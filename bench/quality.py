"""Benchmark: Vigil's detection quality against baselines on the shared labelled data sets.

Run from the repository root: `.venv/bin/python bench/quality.py` (every part, the 20 core tabular
sets, seeds 0-2, the "default" configuration; writes bench/results/quality.md and quality.csv).
`--quick` (seed 0, the 10 smallest core sets, 3 NAB series), `--parts`, `--sets`, `--seeds`,
`--configs`, `--baselines` select less; a partial run prints its tables and writes only with
`--output`. The baselines need the `bench` extra (scikit-learn, pyod): `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if __package__ in (None, ""):                 # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench._quality_data import (
    CORE_SETS,
    SeriesTask,
    calibration_split,
    lagged,
    load_tabular,
    nab_tasks,
    series_holdout,
    skab_task,
    standardise,
    subsample,
    tabular_split,
)
from bench._quality_methods import (
    Run,
    available_baselines,
    run_baseline,
    run_vigil,
    sequence_window,
    vigil_detector,
    with_sequence_columns,
    zscore_scores,
)
from bench._quality_report import write_report
from detector.config import DaemonConfig
from training.quality import average_precision, rates_at, roc_auc

# Named Vigil configurations: overrides of a detector's [model], [threshold] and [training] sections, exactly
# as they would be written in config.toml (validated by detector.config). Add a name, then `--configs NAME`.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "no-trim": {"training": {"first_window_trim": 0.0}},
    "wide": {"model": {"hidden": [64, 32], "latent": 8}},
    "mem8k": {"model": {"memory_size": 8192}},
    "mem4k": {"model": {"memory_size": 4096}},
    "exact": {"model": {"neighbor_search": "exact"}},
    "previous": {"model": {"neighbor_search": "exact", "memory_size": 20000}},     # the default before 2026-12-02
    "approx-20k": {"model": {"memory_size": 20000}},
    "no-trim-50k": {"training": {"first_window_trim": 0.0}, "model": {"memory_size": 50000}},
    "deep-50k": {"model": {"hidden": [128, 64], "latent": 16, "memory_size": 50000}},
    "deep": {"model": {"hidden": [128, 64], "latent": 16}},
    "recon": {"model": {"score": "reconstruction"}},
    "seq-conv": {"model": {"window": 16, "arch": "conv", "time_features": True}},
    "seq-lstm": {"model": {"window": 16, "arch": "lstm", "hidden": [32], "time_features": True}},
}
QUICK_SETS = CORE_SETS[:10]
QUICK_NAB = ["rogue_agent_key_hold", "ec2_request_latency_system_failure", "rogue_agent_key_updown"]
RESULTS = Path(__file__).parent / "results"
Record = dict[str, Any]


def _measure(part: str, dataset: str, seed: int, method: str, truth: np.ndarray[Any, Any],
             run: Callable[[], Run], groups: np.ndarray[Any, Any] | None = None) -> Record:
    """Run one method and score it against `truth`; a failure is recorded (and printed), not raised."""
    record: Record = {"part": part, "dataset": dataset, "seed": seed, "method": method,
                      "n_test": len(truth), "n_anomalies": int(truth.sum())}
    try:
        result = run()
    except Exception as exc:            # a long run goes on; the table shows the failure
        record["error"] = f"{exc.__class__.__name__}: {exc}"
        print(f"  {dataset} seed {seed} {method}: FAILED {record['error']}", file=sys.stderr)
        return record
    rates = rates_at(truth, result.flags)
    record |= {"roc_auc": roc_auc(truth, result.scores), "ap": average_precision(truth, result.scores),
               "fpr": rates.false_positive_rate, "target_fpr": result.target_fpr, "precision": rates.precision,
               "recall": rates.recall, "fit_s": result.fit_s, "score_s": result.score_s, **result.info}
    if groups is not None:
        aucs = [roc_auc(truth[groups == g], result.scores[groups == g]) for g in pd.unique(groups)]
        record["mean_group_auc"] = float(np.nanmean(aucs))
    print(f"  {dataset} seed {seed} {method}: ROC-AUC {record['roc_auc']:.3f} AP {record['ap']:.3f} "
          f"FPR {record['fpr']:.4f} ({result.fit_s + result.score_s:.1f} s)", file=sys.stderr)
    return record


def _frame(x: np.ndarray[Any, Any], features: list[str]) -> pd.DataFrame:
    return pd.DataFrame(x.astype(np.float64), columns=features)


def run_tabular(name: str, seeds: Sequence[int], configs: Sequence[str], baselines: Sequence[str]) -> list[Record]:
    """Protocol A on one set: per seed, Vigil configurations then baselines on the same split."""
    x, y = load_tabular(name)
    features = [f"x{i}" for i in range(x.shape[1])]
    records = []
    for seed in seeds:
        train, test = tabular_split(y, seed)
        truth, test_frame = y[test], _frame(x[test], features)
        for config in configs:
            det = vigil_detector(CONFIGS[config], features, seed)
            if sequence_window(det) > 1:
                continue                                 # a sequence model has no meaning on unordered rows
            rows = subsample(train, det.training.max_records, seed)
            records.append(_measure("tabular", name, seed, f"vigil:{config}", truth,
                                    partial(run_vigil, det, _frame(x[rows], features), test_frame)))
        fit_pos, hold_pos = calibration_split(len(train), seed)
        parts = (train[fit_pos], train[hold_pos], test)
        x_fit, x_hold, x_test = standardise(*(x[rows].astype(np.float64) for rows in parts))
        for baseline in baselines:
            records.append(_measure("tabular", name, seed, baseline, truth,
                                    partial(run_baseline, baseline, seed, x_fit, x_hold, x_test)))
    return records


def _vigil_on_series(task: SeriesTask, config: str, seed: int) -> Run:
    """Fit on the task's training rows (the newest training.max_records), score every row, keep the test rows."""
    det = vigil_detector(CONFIGS[config], list(task.features), seed)
    frame, features = task.frame, list(task.features)
    train_rows = np.flatnonzero(task.train)[-det.training.max_records:]
    fit_frame = with_sequence_columns(frame.loc[train_rows, features].reset_index(drop=True),
                                      frame["ts"].iloc[train_rows], frame["key"].iloc[train_rows])
    run = run_vigil(det, fit_frame, with_sequence_columns(frame[features], frame["ts"], frame["key"]))
    run.scores, run.flags = run.scores[task.test], run.flags[task.test]
    return run


def _zscore_run(task: SeriesTask) -> Run:
    """Rolling z-score over one day of points; threshold: the 99th percentile over the training rows."""
    started = time.perf_counter()
    step_s = float(np.median(np.diff(task.frame["ts"].to_numpy().astype("datetime64[s]").astype(np.int64))))
    scores = zscore_scores(task.values, task.frame["key"].to_numpy(), max(2, round(86400 / step_s)))
    threshold = float(np.quantile(scores[task.train], 0.99, method="higher"))
    test = scores[task.test]
    return Run(test, test > threshold, 0.01, 0.0, time.perf_counter() - started, {"threshold": threshold})


def run_series(part: str, task: SeriesTask, seeds: Sequence[int], configs: Sequence[str],
               baselines: Sequence[str], lags: int, zscore: bool) -> list[Record]:
    """A time-series task: Vigil configurations, then baselines on `lags` lagged values, on the same rows."""
    truth = task.labels[task.test]
    groups = task.frame["key"].to_numpy()[task.test] if part == "skab" else None
    x = lagged(task.values, task.frame["key"].to_numpy(), lags)
    fit_mask, hold_mask = series_holdout(task)
    x_fit, x_hold, x_test = standardise(x[fit_mask], x[hold_mask], x[task.test])
    records = []
    for seed in seeds:
        for config in configs:
            records.append(_measure(part, task.name, seed, f"vigil:{config}", truth,
                                    partial(_vigil_on_series, task, config, seed), groups))
        for baseline in baselines:
            records.append(_measure(part, task.name, seed, baseline, truth,
                                    partial(run_baseline, baseline, seed, x_fit, x_hold, x_test), groups))
        if zscore:
            records.append(_measure(part, task.name, seed, "zscore", truth, partial(_zscore_run, task), groups))
    return records


def _one_thread() -> None:
    torch.set_num_threads(1)


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--parts", type=_csv_list, default=["tabular", "nab", "skab"],
                        help="comma-separated: tabular, nab, skab (default all)")
    parser.add_argument("--sets", type=_csv_list, help="tabular sets (default: the 20 core sets)")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in _csv_list(s)], help="default 0,1,2")
    parser.add_argument("--configs", type=_csv_list, default=["default"],
                        help=f"Vigil configurations, from: {', '.join(CONFIGS)} (default: default)")
    parser.add_argument("--baselines", type=_csv_list, help="default: every importable one of "
                        "iforest, lof, knn, pyod-ae, ecod")
    parser.add_argument("--lags", type=int, help="lagged values the baselines see on series (default: the "
                        "largest model.window among the configurations, 1 until sequence mode exists)")
    parser.add_argument("--jobs", type=int, default=1, help="tabular sets run in this many processes at once "
                        "(each with one torch thread; for many-core machines)")
    parser.add_argument("--quick", action="store_true", help="seed 0, the 10 smallest core sets, 3 NAB series")
    parser.add_argument("--output", type=Path, help="Markdown file to write (a .csv of every run goes beside "
                        "it); default bench/results/quality.md for a full run, none for a partial one")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    partial = args.quick or args.sets or args.seeds or args.baselines or args.parts != ["tabular", "nab", "skab"]
    if args.output is None and not partial:
        args.output = RESULTS / "quality.md"
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.sets = args.sets or list(QUICK_SETS if args.quick else CORE_SETS)
    available = available_baselines()
    args.baselines = available if args.baselines is None else args.baselines
    if missing := sorted(set(args.baselines) - set(available)):
        parser.error(f"baselines {missing} are unknown or their package is missing (pip install -e '.[bench]')")
    if args.lags is None:
        args.lags = max(sequence_window(vigil_detector(CONFIGS[c], ["x"], 0)) for c in args.configs)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(DaemonConfig().torch_threads)         # the daemon's default: one thread
    started = time.perf_counter()
    records: list[Record] = []
    if "tabular" in args.parts:
        if args.jobs > 1:       # one process per set, largest first; each uses one torch thread
            order = sorted(args.sets, key=lambda name: -load_tabular(name)[0].size)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_one_thread) as pool:
                done = pool.map(run_tabular, order, *zip(*[(args.seeds, args.configs, args.baselines)] * len(order),
                                                          strict=True))
                by_name = dict(zip(order, done, strict=True))
            for name in args.sets:
                records += by_name[name]
        else:
            for name in args.sets:
                print(f"tabular {name}", file=sys.stderr)
                records += run_tabular(name, args.seeds, args.configs, args.baselines)
    if "nab" in args.parts:
        for task in nab_tasks(QUICK_NAB if args.quick else None):
            print(f"nab {task.name}", file=sys.stderr)
            records += run_series("nab", task, args.seeds, args.configs, args.baselines, args.lags, zscore=True)
    if "skab" in args.parts:
        print("skab", file=sys.stderr)
        records += run_series("skab", skab_task(), args.seeds, args.configs, args.baselines, args.lags, zscore=False)
    wall_s = time.perf_counter() - started
    command = " ".join([".venv/bin/python bench/quality.py", *(argv if argv is not None else sys.argv[1:])])
    text = write_report(pd.DataFrame(records), args, CONFIGS, command, wall_s)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        pd.DataFrame(records).to_csv(args.output.with_suffix(".csv"), index=False)
        print(f"wrote {args.output} and {args.output.with_suffix('.csv')}", file=sys.stderr)


if __name__ == "__main__":
    main()
