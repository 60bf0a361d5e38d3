"""Benchmark: Vigil tuned per data set on a labelled validation slice, against the baselines.

Run from the repository root: `.venv/bin/python bench/quality_tuned.py` (the 20 core tabular sets,
seeds 0-2; writes bench/results/quality_tuned.md and .csv). `--sets`, `--seeds` select less (a partial
run prints its table and writes only with `--output`); `--jobs N` runs N sets at once.

Protocol A of bench/quality.py (train on 60 % of the normals; test on the other normals and every
anomaly), with the test rows split once more, per seed and stratified by label: a validation slice
(30 %) whose labels the tuning may read, as an operator's reviews, and an evaluation slice (70 %) on
which every row of the table is measured. Nothing is fitted on or chosen with the evaluation slice.

- vigil:default: the shipped configuration (no labels).
- vigil:tuned-weights: score_weights chosen per set by average precision on the slice (the grid
  {0, 0.3, 1}^3; the model is fitted once, its components recombined; ROC-AUC and AP only).
- vigil:reviews: the shipped configuration, given the slice's anomalies as confirmed outliers, as
  the daemon gives a retrained model the outliers people confirmed (model.review_weight).
- vigil:tuned: both, refitted with the chosen weights: the best tuned configuration.
- Baselines fit on the training rows (thresholds on a held-back fifth, as in bench/quality.py);
  knn:tuned-k picks k in {1, 2, 3, 5, 10, 20, 50} by average precision on the same slice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if __package__ in (None, ""):                 # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import itertools
import multiprocessing
import platform
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench._quality_data import CORE_SETS, calibration_split, load_tabular, standardise, subsample, tabular_split
from bench._quality_methods import _KnnDistance, available_baselines, run_baseline, vigil_detector
from detector.trainer import settings_for
from training.fit import fit_model
from training.fitted import FittedModel
from training.quality import average_precision, rates_at, roc_auc
from training.settings import COMPONENTS

VALIDATION_SHARE = 0.3
WEIGHT_GRID = [(0.3, 1.0, 0.5)] + [w for w in itertools.product((0.0, 0.3, 1.0), repeat=3) if sum(w) > 0]
KNN_GRID = (1, 2, 3, 5, 10, 20, 50)
RESULTS = Path(__file__).parent / "results"
Record = dict[str, Any]


def validation_mask(labels: np.ndarray[Any, Any], seed: int) -> np.ndarray[Any, Any]:
    """True for the test rows of the validation slice: VALIDATION_SHARE of each label, drawn with `seed`."""
    rng = np.random.default_rng([seed, 3])
    mask = np.zeros(len(labels), dtype=bool)
    for value in (0, 1):
        rows = np.flatnonzero(labels == value)
        mask[rng.choice(rows, size=max(1, round(VALIDATION_SHARE * len(rows))), replace=False)] = True
    return mask


def mixed(model: FittedModel, components: dict[str, np.ndarray[Any, Any]], weights: Sequence[float]) -> Any:
    """The hybrid score's inner mix (monotone in the score) of `components` with other weights."""
    normalizer = model.scoring.normalizer
    if normalizer is None:
        raise ValueError("a hybrid model is needed")
    z = [(np.log(components[c] + normalizer[c][2]) - normalizer[c][0]) / normalizer[c][1] for c in COMPONENTS]
    return sum(w * zc for w, zc in zip(weights, z, strict=True)) / sum(weights)


def _record(name: str, seed: int, method: str, truth: Any, scores: Any, flags: Any | None, **info: Any) -> Record:
    record: Record = {"dataset": name, "seed": seed, "method": method, "n_eval": len(truth),
                      "n_anomalies": int(truth.sum()), "roc_auc": roc_auc(truth, scores),
                      "ap": average_precision(truth, scores), **info}
    if flags is not None:
        record["fpr"] = rates_at(truth, flags).false_positive_rate
    print(f"  {name} seed {seed} {method}: ROC-AUC {record['roc_auc']:.3f} AP {record['ap']:.3f}", file=sys.stderr)
    return record


def tuned_knn(x_fit: Any, x_hold: Any, x_test: Any, truth: Any, val: Any, seed: int) -> tuple[int, Any, float]:
    """The k of KNN_GRID with the best AP on the validation slice; its test scores and 1 % threshold."""
    runs = {}
    for k in (k for k in KNN_GRID if k < len(x_fit)):
        scorer = _KnnDistance(seed, k)
        scorer.fit(x_fit)
        runs[k] = (scorer.score(x_test), float(np.quantile(scorer.score(x_hold), 0.99, method="higher")))
    k_best = max(runs, key=lambda k: (average_precision(truth[val], runs[k][0][val]), -k))
    return k_best, runs[k_best][0], runs[k_best][1]


def run_set(name: str, seeds: Sequence[int], baselines: Sequence[str]) -> list[Record]:
    torch.set_num_threads(1)
    x, y = load_tabular(name)
    features = [f"x{i}" for i in range(x.shape[1])]
    records: list[Record] = []

    def frame(rows: Any) -> pd.DataFrame:
        return pd.DataFrame(x[rows].astype(np.float64), columns=features)

    for seed in seeds:
        train, test = tabular_split(y, seed)
        truth = y[test].astype(np.int64)
        val = validation_mask(truth, seed)
        ev = ~val
        det = vigil_detector({}, features, seed)
        model, train_settings, threshold = settings_for(det)
        fit_rows = frame(subsample(train, det.training.max_records, seed))
        test_frame = frame(test)
        confirmed = test_frame[val & (truth == 1)].reset_index(drop=True)

        default = fit_model(fit_rows, det.feature_schema, model, train_settings, threshold)
        result = default.score(test_frame)
        records.append(_record(name, seed, "vigil:default", truth[ev], result.scores[ev], result.is_outlier[ev]))
        components = result.components or {}
        best = max(WEIGHT_GRID, key=lambda w: (average_precision(truth[val], mixed(default, components, w)[val]),
                                               -WEIGHT_GRID.index(w)))
        tuned_mix = mixed(default, components, best)
        records.append(_record(name, seed, "vigil:tuned-weights", truth[ev], tuned_mix[ev], None,
                               weights=str(best)))
        for method, weights in (("vigil:reviews", model.weights), ("vigil:tuned", best)):
            fitted = fit_model(fit_rows, det.feature_schema, replace(model, weights=weights), train_settings, threshold,
                               confirmed=confirmed)
            scored = fitted.score(test_frame)
            records.append(_record(name, seed, method, truth[ev], scored.scores[ev], scored.is_outlier[ev],
                                   weights=str(weights), confirmed=len(confirmed)))

        fit_pos, hold_pos = calibration_split(len(train), seed)
        x_fit, x_hold, x_test = standardise(*(x[r].astype(np.float64) for r in
                                              (train[fit_pos], train[hold_pos], test)))
        for baseline in baselines:
            run = run_baseline(baseline, seed, x_fit, x_hold, x_test)
            records.append(_record(name, seed, baseline, truth[ev], run.scores[ev], run.flags[ev]))
        if "knn" in baselines:
            k_best, scores, cut = tuned_knn(x_fit, x_hold, x_test, truth, val, seed)
            records.append(_record(name, seed, "knn:tuned-k", truth[ev], scores[ev], scores[ev] > cut, k=k_best))
    return records


def summary(records: pd.DataFrame, sets: Sequence[str]) -> str:
    per = records.groupby(["method", "dataset"])[["roc_auc", "ap", "fpr"]].mean()
    methods = list(dict.fromkeys(records["method"]))
    knn_auc = per.loc["knn", "roc_auc"].mean() if "knn" in methods else float("nan")
    knn_ap = per.loc["knn", "ap"].mean() if "knn" in methods else float("nan")
    lines = ["| method | labels used | mean ROC-AUC | mean AP | vs kNN (ROC-AUC / AP) | "
             "realised FPR within 0.5-1.5x of 1 % |", "|---|---|---:|---:|---:|---:|"]
    labels = {"vigil:default": "none (the shipped default)", "vigil:tuned-weights": "slice: score_weights",
              "vigil:reviews": "slice: anomalies as confirmed outliers",
              "vigil:tuned": "slice: score_weights and confirmed outliers", "knn:tuned-k": "slice: k"}
    for method in methods:
        rows = per.loc[method]
        auc, ap = rows["roc_auc"].mean(), rows["ap"].mean()
        fpr = rows["fpr"]
        band = f"{int(((fpr >= 0.005) & (fpr <= 0.015)).sum())} of {len(rows)}" if fpr.notna().any() else "-"
        name = f"**{method}**" if method == "vigil:tuned" else method
        lines.append(f"| {name} | {labels.get(method, 'none')} | {auc:.3f} | {ap:.3f} | "
                     f"{auc - knn_auc:+.3f} / {ap - knn_ap:+.3f} | {band} |")
    table = ["", "Per data set (mean over seeds), ROC-AUC / AP:", "",
             "| data set | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for name in sets:
        cells = [f"{per.loc[(m, name), 'roc_auc']:.3f} / {per.loc[(m, name), 'ap']:.3f}" for m in methods]
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + table)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sets", type=lambda s: s.split(","), help="default: the 20 core sets")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], help="default 0,1,2")
    parser.add_argument("--baselines", type=lambda s: s.split(","), help="default: knn, lof, iforest (those "
                        "importable)")
    parser.add_argument("--jobs", type=int, default=1, help="sets run in this many processes (one torch thread each)")
    parser.add_argument("--output", type=Path, help="Markdown file (a .csv goes beside it); default "
                        "bench/results/quality_tuned.md for a full run")
    args = parser.parse_args(argv)
    partial = args.sets or args.seeds or args.baselines
    output = args.output or (None if partial else RESULTS / "quality_tuned.md")
    sets, seeds = args.sets or list(CORE_SETS), args.seeds or [0, 1, 2]
    baselines = args.baselines or [b for b in ("knn", "lof", "iforest") if b in available_baselines()]
    torch.set_num_threads(1)
    started = time.perf_counter()
    order = sorted(sets, key=lambda n: -load_tabular(n)[0].size)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = dict(zip(order, pool.map(run_set, order, [seeds] * len(order), [baselines] * len(order)),
                            strict=True))
    else:
        done = {name: run_set(name, seeds, baselines) for name in order}
    records = pd.DataFrame([r for name in sets for r in done[name]])
    wall = time.perf_counter() - started
    command = " ".join([".venv/bin/python bench/quality_tuned.py", *(argv if argv is not None else sys.argv[1:])])
    head = [
        "# Detection quality: tuned on a labelled validation slice", "",
        f"Command: `{command}` ({wall:.0f} s). Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.platform()}; Python {platform.python_version()}, torch {torch.__version__}; training on CPU.",
        "", (__doc__ or "").split("\n\n", 2)[2].strip(), "",
        f"{len(sets)} sets x {len(seeds)} seeds; means over seeds, then over sets; every row on the same "
        "evaluation slices. The realised FPR is on the slice's normal rows, at each method's own threshold "
        "(target 1 %).", "",
    ]
    text = "\n".join(head) + "\n" + summary(records, sets) + "\n"
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        records.to_csv(output.with_suffix(".csv"), index=False)
        print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
