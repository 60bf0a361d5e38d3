"""The Markdown report of the quality benchmark: machine, protocol notes and the tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench._quality_data import CORE_SETS, DATA, HOLDOUT_SHARE, SKAB_HEAD_ROWS, TRAIN_SHARE

__all__ = ["write_report"]

FPR_BAND = (0.5, 1.5)       # a realised rate within these multiples of the target counts as calibrated


def write_report(records: pd.DataFrame, args: argparse.Namespace, configs: Mapping[str, Any], command: str,
                 wall_s: float) -> str:
    """The whole report; `records` holds one row per (part, dataset, seed, method)."""
    if "error" not in records.columns:
        records = records.assign(error=np.nan)
    sections = [_header(records, command, wall_s), _protocol(args, configs)]
    for part, render in (("tabular", _tabular), ("nab", _nab), ("skab", _skab)):
        rows = records[records["part"] == part]
        if len(rows):
            sections.append(render(rows))
    failed = records[records["error"].notna()]
    if len(failed):
        lines = [f"* {r.dataset} seed {r.seed} {r.method}: {r.error}" for r in failed.itertuples()]
        sections.append("## Failed runs\n\n" + "\n".join(lines))
    return "\n\n".join(sections) + "\n"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _code_version() -> str:
    """The checkout's commit, and whether detector/, training/ or bench/ differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "detector", "training", "bench"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (" with uncommitted changes in detector/, training/ or bench/" if changed else "")


def _header(records: pd.DataFrame, command: str, wall_s: float) -> str:
    devices = sorted(str(d) for d in records.get("device", pd.Series(dtype=object)).dropna().unique())
    return "\n".join([
        "# Detection quality: Vigil against baselines",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}. Wall time: {wall_s / 60:.1f} min. "
        f"Code: {_code_version()}.",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs (os.cpu_count()), {platform.platform()}; Python "
        f"{platform.python_version()}, torch {_version('torch')} (Vigil trained on: {', '.join(devices) or 'n/a'}; "
        f"one torch thread, the daemon's default), numpy {_version('numpy')}, pandas {_version('pandas')}, "
        f"scikit-learn {_version('scikit-learn')}, pyod {_version('pyod')}.",
    ])


def _protocol(args: argparse.Namespace, configs: Mapping[str, Any]) -> str:
    overrides = "; ".join(f"`{name}` = `{json.dumps(configs[name])}`" for name in args.configs)
    return "\n".join([
        "## Protocol",
        "",
        f"* Seeds {', '.join(map(str, args.seeds))}; every method sees the same splits. Figures are means over "
        "the seeds.",
        f"* Vigil configurations (overrides of a detector's `model`/`threshold`/`training` sections, validated "
        f"by `detector.config` and turned into settings by `detector.trainer.settings_for`, as the daemon does): "
        f"{overrides}. Each fits as the daemon fits a model on a window earlier models screened: "
        "`training.fit.fit_model` without the first-window trim (the protocol's training rows are all "
        "normal; the daemon trims only its very first window, which no model screened), on raw (unscaled) "
        "features, its own validation split (`model.validation_fraction`) for early stopping and the "
        "threshold (a window of at most `threshold.fold_max_rows` rows calibrates on every row, scored out "
        "of fold). `model.seed` is the split's seed unless a configuration sets it. Vigil's FPR is that of "
        "the threshold it fitted itself.",
        f"* Tabular (protocol A of docs/BENCHMARKS.md), sets from `{DATA / 'tabular'}`: per seed the normal "
        f"rows are shuffled, {TRAIN_SHARE:.0%} are for training; the test set is the other normals plus every "
        "anomaly. Vigil trains on a seeded subsample of at most `training.max_records` (50,000 by default, the "
        "daemon's cap) training normals; the baselines get the full training split (shuttle, smtp, cover and "
        "http are the sets above the cap).",
        f"* Baselines: fitted on {1 - HOLDOUT_SHARE:.0%} of the training normals, standardised with their mean "
        f"and standard deviation; the other {HOLDOUT_SHARE:.0%} (never fitted on) sets the threshold at its "
        "99th percentile (target FPR 1 %), like Vigil's own held-out quantile. IsolationForest "
        "(random_state = seed), LocalOutlierFactor (novelty, 20 neighbours), kNN (distance to the 5th nearest "
        "fitted row), PyOD AutoEncoder and ECOD with their defaults. scikit-learn runs with n_jobs=-1.",
        "* Metrics: ROC-AUC and average precision (`detector.quality_metrics`, equal to scikit-learn's), and "
        "the realised false-positive rate on the test normals at the fitted threshold. \"FPR in band\" counts "
        f"the sets whose realised rate (mean over seeds) lies within {FPR_BAND[0]}x-{FPR_BAND[1]}x of the "
        "target. Time: fit plus scoring (test set, and the held-out slice for baselines), seconds per seed.",
        f"* NAB `realKnownCause` (7 series): per series, fit on the points of the first half that lie outside "
        "every window of `combined_windows.json`; score the second half, a point inside a window is an "
        f"anomaly. Baselines see the last {args.lags} value(s) of the series as features (the largest "
        "`model.window` among the configurations, so they see what Vigil sees); their threshold comes from the "
        f"last {HOLDOUT_SHARE:.0%} of the training points, in time. `zscore` is the rolling z-score over the "
        "previous day of points, thresholded at the 99th percentile of its training-point scores.",
        f"* SKAB: one model for all runs, fitted on the anomaly-free run plus the first {SKAB_HEAD_ROWS} rows of "
        "each labelled run minus rows whose `anomaly` is 1; every other row of each run is scored. Metrics are "
        "over all scored rows together, plus the mean of per-run ROC-AUC. F1, FAR (false alarms among normal "
        "rows) and MAR (missed anomalies) are at the threshold. Not the leaderboard's protocol (it fits one "
        "model per run on its first 400 rows), so not comparable with its figures row for row.",
        "* Series: configurations with `model.window` > 1 run in sequence mode (each point scored with the "
        "window of points before it, `training.fit.TS_COLUMN` and `KEY_COLUMN` carry time and series); the "
        "others score each point on its own features. Tabular sets skip sequence configurations.",
    ])


def _methods(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["method"]))


def _per_dataset(rows: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per (dataset, method); time is fit + score."""
    numeric = rows.assign(time_s=rows.get("fit_s", np.nan) + rows.get("score_s", np.nan))
    columns = [c for c in ("roc_auc", "ap", "fpr", "target_fpr", "time_s", "mean_group_auc", "precision", "recall",
                           "n_test", "n_anomalies") if c in numeric.columns]
    return numeric.groupby(["dataset", "method"], sort=False)[columns].mean()


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _matrix(per: pd.DataFrame, datasets: Sequence[str], methods: list[str], column: str, digits: int,
            lead: tuple[list[str], dict[str, list[str]]], mean_over: Sequence[str] | None, best: str | None) -> str:
    """A datasets x methods table of one metric, after `lead` columns (their header, and cells per dataset);
    `best` ("max"/"min") bolds each row's best value; `mean_over` adds a mean row over those datasets."""
    head, cells_of = lead
    header = ["set", *head, *methods]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    table = per[column].unstack("method").reindex(index=list(datasets), columns=methods)
    rows = [(name, cells_of[name], table.loc[name]) for name in datasets]
    if mean_over:
        label = f"**mean ({len(mean_over)} core)**"
        rows.append((label, [""] * len(head), table.reindex(list(mean_over)).mean()))
    for name, extra, values in rows:
        marked = values.max() if best == "max" else values.min() if best == "min" else None
        cells = [f"**{_fmt(v, digits)}**" if marked is not None and v == marked else _fmt(v, digits) for v in values]
        lines.append("| " + " | ".join([str(name), *extra, *cells]) + " |")
    return "\n".join(lines)


def _tabular(rows: pd.DataFrame) -> str:
    per = _per_dataset(rows)
    methods, datasets = _methods(rows), list(dict.fromkeys(rows["dataset"]))
    core = [d for d in datasets if d in CORE_SETS]
    index = pd.read_csv(DATA / "tabular" / "INDEX.csv").set_index("name")
    lead = (["n", "d", "anomaly rate"],
            {d: [f"{int(index.loc[d, 'n']):,}", str(int(index.loc[d, "d"])), f"{index.loc[d, 'anomaly_rate']:.3f}"]
             for d in datasets})

    def matrix(column: str, digits: int, best: str | None) -> str:
        return _matrix(per, datasets, methods, column, digits, lead, core or None, best)

    summary = ["| method | core sets | mean ROC-AUC | mean AP | FPR in band | mean realised FPR "
               "| time, s per seed, all sets |",
               "|---|---:|---:|---:|---:|---:|---:|"]
    for method in methods:
        m = per.xs(method, level="method").reindex(core)
        ratio = m["fpr"] / m["target_fpr"]
        in_band = int(((ratio >= FPR_BAND[0]) & (ratio <= FPR_BAND[1])).sum())
        summary.append(f"| {method} | {int(m['roc_auc'].notna().sum())} | {_fmt(m['roc_auc'].mean())} | "
                       f"{_fmt(m['ap'].mean())} | {in_band} of {int(m['fpr'].notna().sum())} | "
                       f"{_fmt(m['fpr'].mean(), 4)} | {_fmt(m['time_s'].sum(), 1)} |")
    return "\n\n".join([
        "## Tabular sets (protocol A)",
        "Summary over the core sets run (means over sets of the per-set means over seeds):",
        "\n".join(summary),
        "### ROC-AUC\n\n" + matrix("roc_auc", 3, "max"),
        "### Average precision\n\n" + matrix("ap", 3, "max"),
        "### Realised false-positive rate on test normals (target 0.01)\n\n" + matrix("fpr", 4, None),
        "### Time: fit + score, seconds per seed\n\n" + matrix("time_s", 1, None),
    ])


def _series_summary(per: pd.DataFrame, methods: list[str], extra: bool) -> str:
    header = "| method | mean ROC-AUC | mean AP | mean realised FPR |" + (
        " F1 | FAR % | MAR % | mean per-run ROC-AUC |" if extra else "") + " time, s per seed |"
    lines = [header, "|---" + "|---:" * (header.count("|") - 2) + "|"]
    for method in methods:
        m = per.xs(method, level="method")
        cells = [_fmt(m["roc_auc"].mean()), _fmt(m["ap"].mean()), _fmt(m["fpr"].mean(), 4)]
        if extra:
            p, r = m["precision"].mean(), m["recall"].mean()
            f1 = 2 * p * r / (p + r) if p + r > 0 else np.nan
            cells += [_fmt(f1), _fmt(100 * m["fpr"].mean(), 1), _fmt(100 * (1 - r), 1),
                      _fmt(m["mean_group_auc"].mean())]
        cells.append(_fmt(m["time_s"].sum(), 1))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nab(rows: pd.DataFrame) -> str:
    per = _per_dataset(rows)
    methods, datasets = _methods(rows), list(dict.fromkeys(rows["dataset"]))
    counts = rows.groupby("dataset", sort=False)[["n_test", "n_anomalies"]].first()
    lead = (["test points", "in windows"],
            {d: [f"{int(counts.loc[d, 'n_test']):,}", f"{int(counts.loc[d, 'n_anomalies']):,}"] for d in datasets})
    return "\n\n".join([
        "## NAB realKnownCause (univariate series)",
        _series_summary(per, methods, extra=False),
        "### ROC-AUC per series\n\n" + _matrix(per, datasets, methods, "roc_auc", 3, lead, None, "max"),
        "### Average precision per series\n\n" + _matrix(per, datasets, methods, "ap", 3, lead, None, "max"),
    ])


def _skab(rows: pd.DataFrame) -> str:
    per = _per_dataset(rows)
    first = rows.iloc[0]
    return "\n\n".join([
        "## SKAB (multivariate sensor runs)",
        f"{int(first['n_test']):,} scored rows, {int(first['n_anomalies']):,} anomalous.",
        _series_summary(per, _methods(rows), extra=True),
    ])
