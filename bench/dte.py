"""Benchmark: Vigil on the two protocols of the DTE paper (ICLR 2024, Tables 1 and 2) over the shared ADBench sets.

Run from the repository root with one thread per library:
`OMP_NUM_THREADS=1 .venv/bin/python bench/dte.py --protocol dte` (semi-supervised, Table 1; writes
bench/results/quality_dte.md and quality_dte.csv) or `--protocol dte-unsup` (unsupervised, Table 2;
quality_dte_unsup.md/.csv). `--sets a,b` runs some sets only (and writes only with `--output`),
`--seeds` other seeds (default 0), `--methods` fewer methods, `--resume` keeps the sets the CSV already holds.

Per set: Vigil fitted as `vigil evaluate` with default settings fits (a default DetectorConfig,
detector.trainer.settings_for, at most training.max_records training rows evenly spaced over all of them; raw
features; TRAIN labelled under dte, so a screened window, and unlabelled under dte-unsup, so a first window with
the first-window trim and wide scale), pyod-style kNN (distance to the 5th nearest training row) and
IsolationForest on standard-scaled features, and the paper's figures beside them. A row per set is
appended to the CSV as soon as the set is done, and the Markdown report is rewritten after each set.
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
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from bench._quality_data import DATA, load_tabular, require, standardise
from bench._quality_report import _code_version, _cpu_model, _version
from detector.config import DaemonConfig
from detector.offline.evaluate import _fit, _training_rows, default_detector, infer_schema
from training.quality import average_precision, rates_at, roc_auc

__all__ = [
    "PROTOCOLS",
    "adbench_rows",
    "bootstrap_rows",
    "main",
    "protocol_split",
    "published",
    "run_set",
    "semi_supervised_split",
    "set_index",
    "summarise",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PROTOCOLS = ("dte", "dte-unsup")
TABULAR = DATA / "tabular"
PUBLISHED = DATA / "published"
TABLES = {"dte": "dte_table1_semi_supervised_aucroc.csv", "dte-unsup": "dte_table2_unsupervised_aucroc.csv"}
TITLES = {"dte": "semi-supervised (DTE Table 1)", "dte-unsup": "unsupervised (DTE Table 2)"}
OUTPUTS = {"dte": "quality_dte.md", "dte-unsup": "quality_dte_unsup.md"}
PAPER_COLUMNS = {"dte": ("DTE-NP", "KNN", "IForest"), "dte-unsup": ("MCD", "IForest", "KNN")}
COMPARED = {"dte": ("DTE-NP", "KNN"), "dte-unsup": ("MCD", "IForest", "KNN")}    # the columns Vigil is counted against
PAPER_NAMES = {"magic.gamma": "magic_gamma"}        # ADBench's name -> the file name in shared/data/tabular
METHODS = ("vigil", "knn", "iforest")
LABELS = {"vigil": "Vigil (defaults, as `vigil evaluate`)", "knn": "kNN, in this run",
          "iforest": "IForest, in this run"}
TRAIN_SHARE = 0.5          # of the normal rows, in file order (dte)
KNN_K = 5
LABEL = "label"            # TRAIN's label column, where the protocol labels its training rows
ADBENCH_MIN_ROWS = 1000   # --adbench-resample: DTE's generator duplicates smaller sets up to this many rows
ADBENCH_MAX_ROWS = 50_000  # ... and subsamples larger ones to this many
REFUSED_AUC = 0.5          # a refused set counts as a random ranking in the second mean
RESULTS = Path(__file__).parent / "results"
Record = dict[str, Any]

CSV_COLUMNS = [
    "protocol", "dataset", "seed", "n", "n_used", "d", "anomaly_rate", "n_train", "n_test", "n_test_anomalies",
    "vigil_auc", "vigil_ap", "vigil_fpr", "vigil_target_fpr", "vigil_threshold", "vigil_n_fit", "vigil_trimmed",
    "vigil_wide", "vigil_wide_k", "vigil_epochs", "vigil_fit_s", "vigil_score_s", "vigil_s", "vigil_error",
    "knn_auc", "knn_ap", "knn_s", "knn_error", "iforest_auc", "iforest_ap", "iforest_s", "iforest_error",
    "paper_dte_np", "paper_knn", "paper_iforest", "paper_mcd", "set_s",
]
PAPER_FIELDS = {"DTE-NP": "paper_dte_np", "KNN": "paper_knn", "IForest": "paper_iforest", "MCD": "paper_mcd"}


# --- data, splits and the published tables ------------------------------------------------------------------

def set_index(root: Path = TABULAR) -> pd.DataFrame:
    """INDEX.csv of the shared tabular sets (name, n, d, anomaly_rate, ...), smallest first (rows, then columns)."""
    index = pd.read_csv(require(root / "INDEX.csv"))
    return index.sort_values(["n", "d", "name"], kind="stable").reset_index(drop=True)


def published(protocol: str, root: Path = PUBLISHED) -> pd.DataFrame:
    """The paper's table for `protocol`: AUC-ROC in percent, one row per set (index: the shared file names,
    `magic_gamma` for ADBench's `magic.gamma`), one column per method; all 57 sets of the paper."""
    table = pd.read_csv(require(root / TABLES[protocol]))
    table["dataset"] = table["dataset"].replace(PAPER_NAMES)
    return table.set_index("dataset")


def semi_supervised_split(y: npt.ArrayLike, train_share: float = TRAIN_SHARE) -> tuple[IntArray, IntArray]:
    """DTE's semi-supervised split: the normal rows in file order, the first round(train_share * n_normal)
    to train on; the remaining normals, then every anomaly, to test. No randomness."""
    labels = np.asarray(y)
    normals = np.flatnonzero(labels == 0)
    n_train = round(train_share * len(normals))
    return normals[:n_train].astype(np.int64), np.concatenate([normals[n_train:], np.flatnonzero(labels == 1)])


def bootstrap_rows(n: int, seed: int) -> IntArray:
    """DTE's unsupervised training rows: n draws with replacement from all n rows (seeded), in file order."""
    return np.sort(np.random.default_rng(seed).integers(0, n, size=n)).astype(np.int64)


def adbench_rows(n: int, seed: int) -> IntArray | None:
    """The rows DTE's data generator (ADBench's) keeps before any split, with numpy's legacy generator seeded
    as it seeds it: a set under ADBENCH_MIN_ROWS rows is bootstrapped up to ADBENCH_MIN_ROWS rows, one over
    ADBENCH_MAX_ROWS subsampled (without replacement) to ADBENCH_MAX_ROWS, in the drawn order; None otherwise."""
    if ADBENCH_MIN_ROWS <= n <= ADBENCH_MAX_ROWS:
        return None
    legacy = np.random.RandomState(seed)
    if n < ADBENCH_MIN_ROWS:
        return legacy.choice(np.arange(n), ADBENCH_MIN_ROWS, replace=True).astype(np.int64)
    return legacy.choice(np.arange(n), ADBENCH_MAX_ROWS, replace=False).astype(np.int64)


def protocol_split(protocol: str, y: npt.ArrayLike, seed: int) -> tuple[IntArray, IntArray]:
    """(train, test) row indices of `protocol`; dte-unsup tests on every row, anomalies trained on unlabelled."""
    if protocol == "dte":
        return semi_supervised_split(y)
    if protocol == "dte-unsup":
        n = len(np.asarray(y))
        return bootstrap_rows(n, seed), np.arange(n, dtype=np.int64)
    raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def scaled(protocol: str, x: npt.NDArray[Any], train: IntArray, test: IntArray) -> tuple[FloatArray, FloatArray]:
    """The baselines' features: standard-scaled with the training rows' statistics (dte), or with every row's
    (dte-unsup, as DTE's code scales the whole set before it draws the bootstrap sample)."""
    values = x.astype(np.float64)
    if protocol == "dte":
        fit, other = standardise(values[train], values[test])
        return fit, other
    (whole,) = standardise(values)
    return whole[train], whole[test]


# --- the methods ----------------------------------------------------------------------------------------------

def _frame(x: npt.NDArray[Any]) -> pd.DataFrame:
    return pd.DataFrame(x.astype(np.float64), columns=[f"x{i}" for i in range(x.shape[1])])


def vigil_scores(x_train: npt.NDArray[Any], x_test: npt.NDArray[Any], seed: int,
                 model_settings: dict[str, Any] | None = None,
                 train_labels: npt.NDArray[Any] | None = None) -> tuple[FloatArray, Record]:
    """Fit as `vigil evaluate TRAIN TEST` with default settings does (the schema inferred, a default detector,
    its training rows) on raw features; score the test rows. `train_labels`: TRAIN's label column, where the
    protocol labels its training rows (dte: all normal): evaluate then leaves the rows labelled 1 out and fits
    a screened window; without them (dte-unsup: anomalies unlabelled) it fits a first window, with the
    first-window trim and wide scale. `model_settings`: keys of the detector's `model` section to set
    (validated as a config file's are). Raises TrainingFailedError (`vigil evaluate`'s message) when Vigil
    refuses the training rows."""
    train, test = _frame(x_train), _frame(x_test)
    schema = infer_schema(train, test, exclude=set())
    det = default_detector(schema)
    values = det.model.model_dump() | {"seed": seed} | (model_settings or {})
    det = det.model_copy(update={"model": type(det.model).model_validate(values)})
    label = None
    if train_labels is not None:
        label = LABEL
        train[label] = np.asarray(train_labels, dtype=np.int64)
    rows = _training_rows(train, label, det, Path("TRAIN"), [])
    screened = label is not None
    if screened:
        rows = rows.drop(columns=[LABEL])
    started = time.perf_counter()
    model = _fit(rows, schema, det, screened)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    result = model.score(test)
    score_s = time.perf_counter() - started
    flags = np.asarray(result.is_outlier, dtype=bool)
    info = {"vigil_n_fit": len(rows), "vigil_trimmed": int(model.report.get("trimmed_rows", 0)),
            "vigil_epochs": int(model.report["epochs_run"]), "vigil_wide": int(bool(model.report.get("wide", False))),
            "vigil_wide_k": int(model.report["wide_scale"]["k"]) if model.report["wide_scale"]["used"] else 0,
            "vigil_threshold": float(model.threshold.value),
            "vigil_target_fpr": float(model.threshold.target_fpr), "vigil_fit_s": fit_s, "vigil_score_s": score_s,
            "_flags": flags}
    return np.asarray(result.scores, dtype=np.float64), info


def knn_scores(x_fit: FloatArray, x_test: FloatArray, k: int = KNN_K) -> FloatArray:
    """pyod's KNN (method "largest"): the distance of each test row to its k-th nearest fitted row (a test row
    that is also a fitted row counts itself, at distance 0, as pyod's decision_function does)."""
    from sklearn.neighbors import NearestNeighbors  # type: ignore[import-untyped]

    model = NearestNeighbors(n_neighbors=k, n_jobs=1).fit(x_fit)
    distances, _ = model.kneighbors(x_test, n_neighbors=k)
    return np.asarray(distances[:, -1], dtype=np.float64)


def iforest_scores(x_fit: FloatArray, x_test: FloatArray, seed: int) -> FloatArray:
    """scikit-learn's IsolationForest (defaults, random_state = seed, one job); higher = more anomalous."""
    from sklearn.ensemble import IsolationForest  # type: ignore[import-untyped]

    model = IsolationForest(random_state=seed, n_jobs=1).fit(x_fit)
    return -np.asarray(model.score_samples(x_test), dtype=np.float64)


def _measure(method: str, truth: npt.NDArray[Any], run: Callable[[], tuple[FloatArray, Record]]) -> Record:
    """Run one method; its AUC-ROC, AP and seconds under `method`_ keys. A failure is recorded, not raised."""
    started = time.perf_counter()
    try:
        scores, info = run()
    except Exception as exc:            # a long run goes on; the report shows the message
        return {f"{method}_error": f"{exc.__class__.__name__}: {exc}", f"{method}_s": time.perf_counter() - started}
    record = {f"{method}_auc": roc_auc(truth, scores), f"{method}_ap": average_precision(truth, scores),
              f"{method}_s": time.perf_counter() - started}
    flags = info.pop("_flags", None)
    if flags is not None:
        record[f"{method}_fpr"] = rates_at(truth, flags).false_positive_rate
    return record | info


def run_set(protocol: str, name: str, seed: int, methods: Sequence[str] = METHODS,
            paper: pd.DataFrame | None = None, data: tuple[npt.NDArray[Any], npt.NDArray[Any]] | None = None,
            resample: bool = False, model_settings: dict[str, Any] | None = None) -> Record:
    """One set under `protocol` with `seed`: every method on the same split; one CSV row (AUCs as fractions).
    `resample`: first resample the set as DTE's data generator does (adbench_rows)."""
    started = time.perf_counter()
    x, y = data if data is not None else load_tabular(name)
    n_file = len(y)
    if resample and (rows := adbench_rows(len(y), seed)) is not None:
        x, y = x[rows], y[rows]
    train, test = protocol_split(protocol, y, seed)
    truth = np.asarray(y)[test]
    record: Record = {"protocol": protocol, "dataset": name, "seed": seed, "n": n_file, "n_used": len(y),
                      "d": x.shape[1],
                      "anomaly_rate": float(np.mean(y)), "n_train": len(train), "n_test": len(test),
                      "n_test_anomalies": int(truth.sum())}
    if "vigil" in methods:
        labels = np.asarray(y)[train] if protocol == "dte" else None     # dte-unsup trains on unlabelled rows
        record |= _measure("vigil", truth, lambda: vigil_scores(x[train], x[test], seed, model_settings, labels))
    if "knn" in methods or "iforest" in methods:
        x_fit, x_test = scaled(protocol, x, train, test)
        if "knn" in methods:
            record |= _measure("knn", truth, lambda: (knn_scores(x_fit, x_test), {}))
        if "iforest" in methods:
            record |= _measure("iforest", truth, lambda: (iforest_scores(x_fit, x_test, seed), {}))
    if paper is not None and name in paper.index:
        figures: dict[Any, Any] = paper.loc[name].to_dict()
        for column in PAPER_COLUMNS[protocol]:
            record[PAPER_FIELDS[column]] = round(float(figures[column]) / 100.0, 6)
    record["set_s"] = time.perf_counter() - started
    return record


# --- the report ------------------------------------------------------------------------------------------------

def _pct(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def per_set(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per set (means over seeds); vigil_refused holds the first error when every seed failed."""
    rows = rows.reindex(columns=CSV_COLUMNS)
    numeric = [c for c in CSV_COLUMNS if c not in ("protocol", "dataset") and not c.endswith("_error")]
    values = rows[numeric].apply(pd.to_numeric, errors="coerce").assign(dataset=rows["dataset"])
    table = values.groupby("dataset", sort=False)[numeric].mean()
    for method in METHODS:
        ran = rows.groupby("dataset", sort=False)[f"{method}_auc"].count()
        first_error = rows.groupby("dataset", sort=False)[f"{method}_error"].first()
        table[f"{method}_refused"] = first_error.where(ran == 0)
    result: pd.DataFrame = table
    return result


def summarise(rows: pd.DataFrame, protocol: str) -> dict[str, Any]:
    """Means, wins and losses of a protocol's per-set rows (see the report for what each one is)."""
    table = per_set(rows)
    ran = table[table["vigil_auc"].notna()]
    refused = table[table["vigil_refused"].notna()]
    papers = [PAPER_FIELDS[c] for c in PAPER_COLUMNS[protocol]]
    columns = ["vigil_auc", "knn_auc", "iforest_auc", *papers]
    counted = table["vigil_auc"].where(table["vigil_refused"].isna(), REFUSED_AUC)
    summary: dict[str, Any] = {
        "n_sets": len(table), "n_ran": len(ran), "refused": refused["vigil_refused"].to_dict(),
        "mean_ran": {c: float(ran[c].mean()) for c in columns},
        "mean_all": {c: float((counted if c == "vigil_auc" else table[c]).mean()) for c in columns},
        "ap_ran": {m: float(ran[f"{m}_ap"].mean()) for m in METHODS},
        "vigil_fpr_median": float(ran["vigil_fpr"].median()),
        "fpr_in_band": int(ran["vigil_fpr"].between(0.005, 0.015).sum()),
        "wide": [str(name) for name in ran.index[ran["vigil_wide"] > 0]], "wins": {},
    }
    vigil = (100 * ran["vigil_auc"]).round(2)
    for column in COMPARED[protocol]:
        other = (100 * ran[PAPER_FIELDS[column]]).round(2)
        lost = ran.index[vigil < other]
        summary["wins"][column] = {
            "won": int((vigil > other).sum()), "tied": int((vigil == other).sum()),
            "lost": {name: float(vigil[name] - other[name]) for name in lost}}
    return summary


def _header(protocol: str, command: str, wall_s: float, total_s: float) -> list[str]:
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return [
        f"# Vigil on the DTE paper's {TITLES[protocol]} protocol",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}. Code: {_code_version()}. Wall time of this "
        f"invocation: {wall_s / 60:.1f} min; sum of the per-set times in the CSV: {total_s / 60:.1f} min.",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs (os.cpu_count()), shared with other work; "
        f"{platform.platform()}; Python {platform.python_version()}, torch {_version('torch')} (CPU, "
        f"{torch.get_num_threads()} thread), OMP_NUM_THREADS={threads}, numpy {_version('numpy')}, pandas "
        f"{_version('pandas')}, scikit-learn {_version('scikit-learn')} (n_jobs=1); one process.",
    ]


def _protocol_text(protocol: str, seeds: Sequence[int], resample: bool) -> list[str]:
    split = (
        "* Split (DTE Table 1, `semi`): per set the normal rows in file order; the first "
        f"round({TRAIN_SHARE} x n_normal) train, the remaining normals plus every anomaly are the test set. "
        "Deterministic: the seed varies the models only."
        if protocol == "dte" else
        "* Split (DTE Table 2, `unsup`): the training rows are a bootstrap sample (n draws with replacement, "
        "numpy default_rng(seed), sorted into file order) of every row, anomalies included and unlabelled; every "
        "row is scored.")
    scaling = ("standard-scaled with the training rows' mean and standard deviation" if protocol == "dte" else
               "standard-scaled with every row's mean and standard deviation (DTE's code scales the whole set, "
               "then draws the bootstrap sample)")
    return [
        "## Protocol",
        "",
        split,
        f"* Seeds: {', '.join(map(str, seeds))}; figures are means over them.",
        "* Vigil: fitted as `vigil evaluate TRAIN TEST` fits with default settings (detector.offline.evaluate: "
        "the schema inferred from the columns, all numeric; a default DetectorConfig through "
        "`detector.trainer.settings_for`; at most `training.max_records` = 50,000 training rows, evenly spaced "
        "over all of them), on the raw features (Vigil scales them itself); `model.seed` = the seed. "
        + ("TRAIN carries the protocol's labels (all 0), so it is fitted as a window earlier models screened: "
           "no first-window trim, no wide scale. " if protocol == "dte" else
           "TRAIN has no labels, so it is fitted as a detector's first window: the first-window trim "
           "(`training.first_window_trim` = 0.02) and the wide scale (`training.first_window_wide_share` = 0.2). ")
        + "Its FPR is the realised "
        "false-positive rate of its own threshold (target 1 %) on the scored normal rows.",
        f"* kNN (pyod-style, as ADBench runs pyod's KNN): distance to the {KNN_K}th nearest training row, "
        f"{scaling}; IsolationForest (scikit-learn, defaults, random_state = seed) on the same features.",
        "* Paper columns: the published means over 5 seeds (vicliv/DTE README), shown as AUC-ROC in percent.",
        "* Difference from DTE's code not stated in the README: its data generator (ADBench's, modified) "
        f"bootstraps sets under {ADBENCH_MIN_ROWS:,} rows up to {ADBENCH_MIN_ROWS:,} rows and subsamples sets over "
        f"{ADBENCH_MAX_ROWS:,} rows to {ADBENCH_MAX_ROWS:,}, both at random, before the split. "
        + ("This run does the same (`--adbench-resample`: numpy's legacy generator seeded with the seed; the "
           "resampled rows are in the drawn order, as in DTE's code)." if resample else
           "Here every set is used whole, as the README states the protocol; the in-run kNN against the "
           "paper's KNN column shows where this matters."),
    ]


def _summary_text(protocol: str, rows: pd.DataFrame) -> list[str]:
    s = summarise(rows, protocol)
    papers = PAPER_COLUMNS[protocol]
    lines = [
        "## Summary",
        "",
        f"{s['n_sets']} sets in this run; Vigil ran on {s['n_ran']}, refused {len(s['refused'])}.",
        "",
        f"| method | mean AUC-ROC (%), the {s['n_ran']} sets Vigil ran | mean AUC-ROC (%), all {s['n_sets']} sets, "
        "Vigil's refusals as 50.00 | mean AP (%), the sets Vigil ran |",
        "|---|---:|---:|---:|",
    ]
    for method in METHODS:
        key = f"{method}_auc"
        lines.append(f"| {LABELS[method]} | {_pct(s['mean_ran'][key])} | {_pct(s['mean_all'][key])} | "
                     f"{_pct(s['ap_ran'][method])} |")
    for column in papers:
        key = PAPER_FIELDS[column]
        lines.append(f"| {column} (paper) | {_pct(s['mean_ran'][key])} | {_pct(s['mean_all'][key])} | n/a |")
    lines += [
        "",
        "The first column averages every method over the same sets, those Vigil ran; the second averages every "
        "method over all sets, Vigil's refused sets counted as AUC-ROC 0.5. "
        f"Vigil's realised FPR at its own threshold: median {_pct(s['vigil_fpr_median'])} % (target 1 %), within "
        f"0.5-1.5 % on {s['fpr_in_band']} of {s['n_ran']} sets. "
        + (f"Vigil scored by its neighbour memory alone (a `wide` window: under 2 training rows per encoded column) "
           f"on: {', '.join(s['wide'])}." if s["wide"] else "No set was `wide` for Vigil (under 2 rows per column)."),
        "",
        "| Vigil against (paper) | wins | ties | losses | of which refused |",
        "|---|---:|---:|---:|---:|",
    ]
    n_refused = len(s["refused"])
    for column, outcome in s["wins"].items():
        lines.append(f"| {column} | {outcome['won']} | {outcome['tied']} | {len(outcome['lost']) + n_refused} | "
                     f"{n_refused} |")
    lines += ["", "Compared at the paper's precision (two decimals, percent). Sets Vigil loses (Vigil minus the "
              "paper, points; refused sets listed below):", ""]
    for column, outcome in s["wins"].items():
        lost = sorted(outcome["lost"].items(), key=lambda item: item[1])
        lines.append(f"* against {column} ({len(lost)}): " + (", ".join(f"{n} {g:+.2f}" for n, g in lost) or "none"))
    if s["refused"]:
        lines += ["", "Refused by Vigil (counted as losses, and as 0.5 AUC-ROC in the second mean):", ""]
        lines += [f"* {name}: refused: {message}" for name, message in s["refused"].items()]
    return lines


def _check_text(protocol: str, rows: pd.DataFrame, resample: bool) -> list[str]:
    table = per_set(rows)
    both = table[table["knn_auc"].notna() & table["paper_knn"].notna()]
    if both.empty:
        return []
    gap = 100 * (both["knn_auc"] - both["paper_knn"])
    far = gap[gap.abs() > 1.0].sort_values()
    rows_of: dict[Any, Any] = table["n"].to_dict()
    sizes = both["n"]
    middle = (sizes >= ADBENCH_MIN_ROWS) & (sizes <= ADBENCH_MAX_ROWS)
    iforest = table[table["iforest_auc"].notna() & table["paper_iforest"].notna()]
    if_gap = 100 * (iforest["iforest_auc"] - iforest["paper_iforest"])
    lines = [
        "## Protocol check: in-run baselines against the paper's",
        "",
        f"kNN in this run minus the paper's KNN over {len(both)} sets: within 0.1 points on "
        f"{(gap.abs() <= 0.1).sum()}, within 1 point on {(gap.abs() <= 1.0).sum()}; median |gap| "
        f"{gap.abs().median():.2f}. On the {int(middle.sum())} sets of {ADBENCH_MIN_ROWS:,}-{ADBENCH_MAX_ROWS:,} rows "
        f"(which DTE's data generator leaves whole): within 0.1 points on {(gap[middle].abs() <= 0.1).sum()}. "
        f"IForest in this run minus the paper's IForest: within 1 point on {(if_gap.abs() <= 1.0).sum()} of "
        f"{len(iforest)}, median |gap| {if_gap.abs().median():.2f} (an IForest differs by its random state; the "
        "paper's is a 5-seed mean).",
        "",
        "Sets where the in-run kNN and the paper's KNN differ by more than 1 point (n: rows in the file): "
        + (", ".join(f"{n} {g:+.2f} (n={int(rows_of[n])})" for n, g in far.items()) or "none") + ".",
    ]
    if not resample:
        effect = ("so the paper's test normals have exact copies among its training rows (a kNN distance of 0): its "
                  "figures for those sets are higher than this protocol can give any method" if protocol == "dte" else
                  "so the paper fits and scores those sets with repeated rows: its figures for them can differ from "
                  "this run's")
        lines += ["", f"A set under {ADBENCH_MIN_ROWS:,} rows is bootstrapped to {ADBENCH_MIN_ROWS:,} rows by DTE's "
                  f"generator before the split, {effect}. `--adbench-resample` repeats that resampling (numpy's "
                  "legacy generator seeded with the seed; the paper's own seeds are not published)."]
    return lines


def _worst_text(rows: pd.DataFrame) -> list[str]:
    table = per_set(rows)
    ran = table[table["vigil_auc"].notna() & table["paper_knn"].notna()]
    gap = (100 * (ran["vigil_auc"] - ran["paper_knn"])).sort_values().head(10)
    lines = ["## The ten worst sets against the paper's KNN", "",
             "| set | n | d | Vigil | paper KNN | Vigil - KNN | kNN in run | Vigil AP | rows fitted | trimmed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_set: dict[Any, dict[Any, Any]] = table.to_dict("index")
    for name, value in gap.items():
        r = by_set[name]
        lines.append(f"| {name} | {int(r['n'])} | {int(r['d'])} | {_pct(r['vigil_auc'])} | {_pct(r['paper_knn'])} | "
                     f"{value:+.2f} | {_pct(r['knn_auc'])} | {_pct(r['vigil_ap'])} | {int(r['vigil_n_fit'])} | "
                     f"{int(r['vigil_trimmed'])} |")
    return lines


def _table_text(protocol: str, rows: pd.DataFrame) -> list[str]:
    table = per_set(rows)
    papers = PAPER_COLUMNS[protocol]
    head = ["set", "n", "d", "train", "Vigil", "kNN", "IForest", *(f"{c} (paper)" for c in papers),
            "Vigil AP", "kNN AP", "IForest AP", "Vigil FPR", "Vigil s", "kNN s", "IForest s", "set s"]
    lines = ["## Per set", "", "AUC-ROC and AP in percent; FPR: Vigil's realised false-positive rate at its own "
             "threshold, percent; seconds (fit plus scoring) on this machine, smallest sets first.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, r in table.iterrows():
        vigil = "refused" if isinstance(r["vigil_refused"], str) else _pct(r["vigil_auc"])
        cells = [str(name), str(int(r["n"])), str(int(r["d"])), str(int(r["n_train"])), vigil, _pct(r["knn_auc"]),
                 _pct(r["iforest_auc"]), *(_pct(r[PAPER_FIELDS[c]]) for c in papers), _pct(r["vigil_ap"]),
                 _pct(r["knn_ap"]), _pct(r["iforest_ap"]), _pct(r["vigil_fpr"]),
                 *(f"{r[k]:.1f}" if np.isfinite(r[k]) else "n/a" for k in ("vigil_s", "knn_s", "iforest_s", "set_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [(name, m, r[f"{m}_refused"]) for name, r in table.iterrows() for m in ("knn", "iforest")
              if isinstance(r[f"{m}_refused"], str)]
    if failed:
        lines += ["", "Baselines that failed:", ""] + [f"* {n} {m}: {e}" for n, m, e in failed]
    times = table[["vigil_s", "knn_s", "iforest_s", "set_s"]].sum()
    lines += ["", f"Time over these sets: Vigil {times['vigil_s'] / 60:.1f} min, kNN {times['knn_s'] / 60:.1f} min, "
              f"IForest {times['iforest_s'] / 60:.1f} min; all, with loading and splitting, "
              f"{times['set_s'] / 60:.1f} min ({times['set_s'] / max(1, len(table)):.1f} s per set on average; "
              "the largest sets dominate)."]
    return lines


def report(rows: pd.DataFrame, protocol: str, seeds: Sequence[int], command: str, wall_s: float,
           resample: bool = False, model_settings: dict[str, Any] | None = None) -> str:
    """The Markdown report of a protocol's per-set rows; `model_settings`: the keys of Vigil's `model` section
    the run set (named wherever the report would say "defaults")."""
    sections = [_header(protocol, command, wall_s, float(rows["set_s"].sum())),
                _protocol_text(protocol, seeds, resample)]
    if len(rows):
        sections += [_summary_text(protocol, rows), _check_text(protocol, rows, resample), _worst_text(rows),
                     _table_text(protocol, rows)]
    text = "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"
    if model_settings:
        changed = ", ".join(f"`model.{key}` = {json.dumps(value)}" for key, value in model_settings.items())
        text = text.replace(LABELS["vigil"], f"Vigil ({changed}, otherwise defaults, as `vigil evaluate`)")
        text = text.replace("fits with default settings", f"fits with default settings except {changed}")
    return text


# --- the command line ------------------------------------------------------------------------------------------

def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--protocol", choices=PROTOCOLS, required=True,
                        help="dte: semi-supervised (Table 1); dte-unsup: unsupervised (Table 2)")
    parser.add_argument("--sets", type=_csv_list, help="comma-separated set names (default: all in INDEX.csv)")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in _csv_list(s)], default=[0], help="default 0")
    parser.add_argument("--methods", type=_csv_list, default=list(METHODS), help="default vigil,knn,iforest")
    parser.add_argument("--output", type=Path, help="Markdown file (the CSV goes beside it); default "
                        "bench/results/quality_dte[_unsup].md for a run of every set, none for --sets")
    parser.add_argument("--adbench-resample", action="store_true", help="resample each set first as DTE's data "
                        f"generator does (under {ADBENCH_MIN_ROWS:,} rows: bootstrapped up to {ADBENCH_MIN_ROWS:,}; "
                        f"over {ADBENCH_MAX_ROWS:,}: subsampled to {ADBENCH_MAX_ROWS:,}); not what the README states")
    parser.add_argument("--model", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="set a key of Vigil's detector `model` section (a JSON value), e.g. wide_share=0.2; "
                        "repeatable; the default: none (the shipped defaults)")
    parser.add_argument("--resume", action="store_true", help="keep the rows the CSV holds; run the other sets")
    args = parser.parse_args(argv)
    args.model = dict(args.model)
    if args.model and args.output is None and args.sets is None:
        parser.error("--model changes the defaults: name an --output other than the defaults' results")
    if unknown := sorted(set(args.methods) - set(METHODS)):
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    index = set_index()
    if unknown := sorted(set(args.sets or []) - set(index["name"])):
        parser.error(f"unknown sets {unknown}; known: {', '.join(index['name'])}")
    if args.output is None and args.sets is None:
        args.output = RESULTS / OUTPUTS[args.protocol]
    chosen = set(args.sets) if args.sets else set(index["name"])
    args.sets = [name for name in index["name"] if name in chosen]        # smallest first
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(DaemonConfig().torch_threads)         # the daemon's default: one thread
    started = time.perf_counter()
    command = " ".join([".venv/bin/python bench/dte.py", *(argv if argv is not None else sys.argv[1:])])
    paper = published(args.protocol)
    csv = args.output.with_suffix(".csv") if args.output is not None else None
    rows = pd.DataFrame(columns=CSV_COLUMNS)
    if csv is not None and args.resume and csv.exists():
        rows = pd.read_csv(csv)
        rows = rows[rows["protocol"] == args.protocol]
    elif csv is not None and csv.exists():
        csv.unlink()
    done = set(zip(rows["dataset"], rows["seed"], strict=True))
    for name in args.sets:
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            print(f"{args.protocol} {name} seed {seed}", file=sys.stderr)
            record = run_set(args.protocol, name, seed, args.methods, paper, resample=args.adbench_resample,
                             model_settings=args.model)
            line = pd.DataFrame([record]).reindex(columns=CSV_COLUMNS)
            print("  " + ", ".join(f"{m} {_pct(record.get(f'{m}_auc', np.nan))}" for m in args.methods)
                  + f" ({record['set_s']:.1f} s)" + "".join(f"; {m}: {record[f'{m}_error']}" for m in args.methods
                                                            if f"{m}_error" in record), file=sys.stderr)
            rows = line if rows.empty else pd.concat([rows, line], ignore_index=True)
            if csv is not None and args.output is not None:
                csv.parent.mkdir(parents=True, exist_ok=True)
                line.to_csv(csv, mode="a", header=not csv.exists(), index=False)
                args.output.write_text(report(rows, args.protocol, args.seeds, command, time.perf_counter() - started,
                                              args.adbench_resample, args.model), encoding="utf-8")
    text = report(rows, args.protocol, args.seeds, command, time.perf_counter() - started, args.adbench_resample,
                  args.model)
    print(text)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output} and {csv}", file=sys.stderr)


if __name__ == "__main__":
    main()
