"""SKAB (Skoltech Anomaly Benchmark) outlier-detection leaderboard protocol, applied to Vigil configurations.

The protocol of waico/SKAB's leaderboard (README "Outlier detection problem"; notebooks/*.ipynb; core/utils.py
`load_preprocess_skab`; core/metrics.py `chp_score(..., metric="binary")`), re-implemented here:

* the 34 labelled runs of data/{valve1,valve2,other}/*.csv (the anomaly-free run is not used);
* every run separately: a model is fitted on its first 400 rows (sklearn `train_test_split(train_size=400,
  shuffle=False)`: whatever their labels; one run, other/2, has 296 labelled anomalies among them) and every
  later row of the run is scored; the features are all 8 sensor columns (the notebooks drop only `anomaly` and
  `changepoint`; `datetime` is the index);
* the flags are scored point-wise against the `anomaly` column (1 = the positive class): the confusion counts
  are summed over the scored rows of all 34 runs (23 801 rows, 12 771 of them anomalies) and then
  F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP): pooled, not averaged over runs.

Vigil is fitted as the daemon fits a first model (detector config validated by detector.config, settings from
detector.trainer.settings_for, training.fit.fit_model with the first-window trim) and judged by `is_outlier`,
its own threshold; no threshold is tuned on the labels. Candidate configurations are chosen by F1 on one part of
the runs and confirmed on the other (valve1 against valve2 + other, both ways).

Run from the repository root: `OMP_NUM_THREADS=1 .venv/bin/python bench/skab.py` (every run, every
configuration; writes bench/results/skab.md). `--quick` runs 3 runs (one per group) and writes only with
`--output`; `--configs` selects configurations.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if __package__ in (None, ""):                 # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import math
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from bench._quality_methods import vigil_detector
from detector.config import DaemonConfig
from detector.frames import needs_context
from detector.trainer import settings_for
from training.fit import KEY_COLUMN, TS_COLUMN, fit_model

__all__ = [
    "ANCHORS",
    "ANCHOR_GROUPS",
    "CONFIGS",
    "CONV_AE_RUNS",
    "FOLDS",
    "GROUPS",
    "HEAD_ROWS",
    "SENSORS",
    "Counts",
    "Evaluation",
    "Run",
    "RunResult",
    "drift",
    "evaluate",
    "f1",
    "far",
    "main",
    "mar",
    "runs",
    "select",
    "split",
]

Labels = npt.NDArray[np.int8]
Flags = npt.NDArray[np.bool_]

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "skab" / "data"
RESULTS = Path(__file__).parent / "results"
HEAD_ROWS = 400                     # rows of each run fitted on (SKAB: train_test_split(train_size=400, shuffle=False))
GROUPS = ("valve1", "valve2", "other")
SENSORS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
           "Voltage", "Volume Flow RateRMS")
TIME = "datetime"
QUICK_RUNS = ("valve1/0", "valve2/0", "other/1")

# --- SKAB's leaderboard (waico/SKAB README, "Outlier detection problem", commit b2c0d46c of 2024-08-11) --------
SKAB_SOURCE = ("waico/SKAB README.md, 'Proposed Leaderboard / Outlier detection problem' (commit b2c0d46c, "
               "2024-08-11), https://github.com/waico/SKAB")


@dataclass(frozen=True)
class Anchor:
    """A leaderboard entry: its published figures (F1, FAR %, MAR %) and how its flags were made."""

    name: str
    f1: float
    far_pct: float
    mar_pct: float
    how: str


ANCHORS = (
    Anchor("Conv-AE", 0.78, 13.55, 28.02, "windows of 60 rows; UCL = 4/3 x the 0.999 quantile of the training "
           "windows' own residuals; row i flagged when the 59 windows starting at rows i-59 .. i-1 all exceed it "
           "(they reach 58 rows past row i: the flag waits for later rows)"),
    Anchor("MSET", 0.78, 39.73, 14.13, "relative residual, 60-row moving mean, fixed UCL 0.01"),
    Anchor("T-squared+Q (PCA)", 0.76, 26.62, 24.92, "T2 or Q above its UCL (from the training rows), each after "
           "a 5-row rolling median"),
    Anchor("LSTM-AE", 0.74, 29.96, 25.92, "windows of 10 rows; UCL = 3/2 x the 0.99 quantile of the training "
           "windows' residuals; row i flagged when the 9 windows before it all exceed it"),
    Anchor("Isolation forest", 0.29, 2.56, 82.89, "contamination 0.0005, rolling median of 3 flags"),
)
# Per group (TP, FP, TN, FN) of the anchors: computed from SKAB's own stored predictions (results/results-*.pkl at
# the commit above, matched to the runs by their timestamps); pooled over all runs they give the README's figures
# exactly, which also checks this script's split (first 400 rows) and pooling.
ANCHOR_GROUPS: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "Conv-AE": {"valve1": (4300, 785, 4666, 2009), "valve2": (1074, 208, 987, 443),
                "other": (3819, 502, 3882, 1126)},
    "MSET": {"valve1": (5364, 2100, 3351, 945), "valve2": (1291, 606, 589, 226), "other": (4311, 1676, 2708, 634)},
    "T-squared+Q (PCA)": {"valve1": (4663, 1302, 4149, 1646), "valve2": (1113, 481, 714, 404),
                          "other": (3813, 1153, 3231, 1132)},
    "LSTM-AE": {"valve1": (4116, 1383, 4068, 2193), "valve2": (1212, 617, 578, 305),
                "other": (4133, 1305, 3079, 812)},
    "Isolation forest": {"valve1": (733, 62, 5389, 5576), "valve2": (158, 16, 1179, 1359),
                         "other": (1294, 204, 4180, 3651)},
}
# Conv-AE (the leader) per run (TP, FP, TN, FN), from the same stored predictions
CONV_AE_RUNS: dict[str, tuple[int, int, int, int]] = {
    "valve1/0": (322, 55, 291, 79), "valve1/1": (143, 12, 331, 259), "valve1/2": (337, 161, 177, 0),
    "valve1/3": (0, 0, 344, 404), "valve1/4": (98, 49, 297, 251), "valve1/5": (333, 56, 295, 70),
    "valve1/6": (185, 55, 294, 220), "valve1/7": (264, 0, 289, 141), "valve1/8": (376, 54, 290, 24),
    "valve1/9": (402, 155, 191, 0), "valve1/10": (263, 0, 345, 138), "valve1/11": (265, 0, 342, 134),
    "valve1/12": (399, 164, 177, 0), "valve1/13": (316, 0, 341, 83), "valve1/14": (249, 0, 340, 150),
    "valve1/15": (348, 24, 322, 56),
    "valve2/0": (258, 51, 280, 136), "valve2/1": (166, 0, 330, 167), "valve2/2": (395, 157, 177, 0),
    "valve2/3": (255, 0, 200, 140),
    "other/1": (59, 0, 157, 129), "other/2": (0, 0, 292, 88), "other/3": (342, 53, 286, 56),
    "other/4": (211, 0, 396, 184), "other/5": (409, 55, 290, 1), "other/6": (399, 54, 291, 3),
    "other/7": (345, 53, 290, 2), "other/8": (231, 54, 290, 172), "other/9": (401, 76, 267, 0),
    "other/10": (543, 53, 288, 43), "other/11": (444, 51, 288, 7), "other/12": (238, 53, 286, 71),
    "other/13": (0, 0, 258, 265), "other/14": (197, 0, 203, 105),
}

# --- candidate configurations ----------------------------------------------------------------------------
# Overrides of a detector's [model], [threshold] and [training] sections, as written in config.toml (validated
# by detector.config); (overrides, what it tries). All run at the daemon's defaults otherwise.
CONFIGS: dict[str, tuple[dict[str, dict[str, Any]], str]] = {
    "default": ({}, "the daemon's defaults: hybrid score, point-wise, quantile threshold at target_fpr 0.01"),
    "fpr-0.05": ({"threshold": {"target_fpr": 0.05}}, "a looser threshold"),
    "pot": ({"threshold": {"method": "pot"}}, "peaks-over-threshold tail fit at 0.01"),
    "sigma": ({"threshold": {"method": "sigma"}}, "mean + 3 std of the held-out scores"),
    "no-trim": ({"training": {"first_window_trim": 0.0}}, "no first-window trim"),
    "seq-conv": ({"model": {"window": 16, "arch": "conv"}}, "sequence mode: windows of 16 rows, conv, no time "
                 "features"),
    "seq-conv-time": ({"model": {"window": 16, "arch": "conv", "time_features": True}},
                      "sequence mode with hour/weekday features (as bench/quality.py's seq-conv)"),
    "seq-conv-fpr-0.05": ({"model": {"window": 16, "arch": "conv"}, "threshold": {"target_fpr": 0.05}},
                          "sequence mode, looser threshold"),
}
# development / confirmation folds: choose on the first part, confirm on the second
FOLDS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("valve1",), ("valve2", "other")),
    (("valve2", "other"), ("valve1",)),
)


# --- data ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One labelled SKAB run: `frame` (datetime and the 8 sensors, in file order) and `labels` (anomaly, 0/1)."""

    name: str           # "valve1/0"
    frame: pd.DataFrame
    labels: Labels

    @property
    def group(self) -> str:
        return self.name.split("/")[0]


def _run_order(path: Path) -> tuple[int, int]:
    return GROUPS.index(path.parent.name), int(path.stem)


def runs(root: Path = DATA, names: Iterable[str] | None = None) -> list[Run]:
    """The labelled runs of SKAB's data folder `root` ({valve1,valve2,other}/N.csv), in group then number order;
    only those in `names` ("valve1/0", ...) when given."""
    if not root.is_dir():
        raise FileNotFoundError(f"SKAB data not found at {root} (a 'shared' folder next to the repository)")
    wanted = None if names is None else set(names)
    paths = sorted((p for g in GROUPS for p in (root / g).glob("*.csv")), key=_run_order)
    out = []
    for path in paths:
        name = f"{path.parent.name}/{path.stem}"
        if wanted is not None and name not in wanted:
            continue
        raw = pd.read_csv(path, sep=";", parse_dates=[TIME])
        missing = sorted({TIME, *SENSORS, "anomaly"} - set(raw.columns))
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}")
        out.append(Run(name, raw[[TIME, *SENSORS]].reset_index(drop=True), raw["anomaly"].to_numpy(dtype=np.int8)))
    if wanted is not None and (unknown := sorted(wanted - {r.name for r in out})):
        raise ValueError(f"no SKAB runs {unknown} under {root}")
    return out


def split(run: Run, head: int = HEAD_ROWS) -> tuple[pd.DataFrame, pd.DataFrame, Labels]:
    """(rows fitted on, rows scored, labels of the rows scored): the first `head` rows and every later one."""
    if len(run.frame) <= head:
        raise ValueError(f"{run.name} has {len(run.frame)} rows, not more than {head}")
    return run.frame.iloc[:head], run.frame.iloc[head:], run.labels[head:]


# --- metrics -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    """Point-wise confusion counts; anomaly (1) is the positive class."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @classmethod
    def of(cls, labels: npt.ArrayLike, flags: npt.ArrayLike) -> Counts:
        truth, flagged = np.asarray(labels) == 1, np.asarray(flags, dtype=bool)
        if truth.shape != flagged.shape:
            raise ValueError(f"{truth.shape[0]} labels but {flagged.shape[0]} flags")
        return cls(int((truth & flagged).sum()), int((~truth & flagged).sum()), int((~truth & ~flagged).sum()),
                   int((truth & ~flagged).sum()))

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn)

    @classmethod
    def total(cls, parts: Iterable[Counts]) -> Counts:
        out = cls()
        for part in parts:
            out = out + part
        return out


def f1(c: Counts) -> float:
    """SKAB's F1 = TP / (TP + (FP + FN) / 2); NaN when there is nothing to find and nothing flagged."""
    denominator = c.tp + (c.fp + c.fn) / 2
    return c.tp / denominator if denominator else math.nan


def far(c: Counts) -> float:
    """False alarm rate FP / (FP + TN), a fraction (SKAB prints it in %); NaN without normal rows."""
    return c.fp / (c.fp + c.tn) if c.fp + c.tn else math.nan


def mar(c: Counts) -> float:
    """Missed alarm rate FN / (FN + TP), a fraction (SKAB prints it in %); NaN without anomalies."""
    return c.fn / (c.fn + c.tp) if c.fn + c.tp else math.nan


# --- Vigil on the protocol ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    """One configuration on one run."""

    name: str
    counts: Counts
    n_fit: int
    n_scored: int
    threshold: float
    fit_s: float
    score_s: float
    trimmed: int = 0
    before: Counts = Counts()       # the scored rows before the run's first scored anomaly (all normal)
    after: Counts = Counts()        # the scored rows after its last one (all normal)

    @property
    def group(self) -> str:
        return self.name.split("/")[0]


@dataclass
class Evaluation:
    """A configuration's results on a set of runs; figures pooled over any subset of them."""

    config: str
    results: list[RunResult] = field(default_factory=list)
    error: str | None = None

    def counts(self, groups: Iterable[str] | None = None) -> Counts:
        """Counts summed over the runs of `groups` (all runs when None)."""
        chosen = None if groups is None else set(groups)
        return Counts.total(r.counts for r in self.results if chosen is None or r.group in chosen)

    def has(self, groups: Iterable[str]) -> bool:
        chosen = set(groups)
        return any(r.group in chosen for r in self.results)

    @property
    def seconds(self) -> float:
        return sum(r.fit_s + r.score_s for r in self.results)


def _with_context(frame: pd.DataFrame, run: Run) -> pd.DataFrame:
    """The sensor columns plus the record timestamps and key the training library reads (records_frame's
    `context=True`), the key being the run."""
    out = frame[list(SENSORS)].copy()
    out[TS_COLUMN] = pd.to_datetime(frame[TIME], utc=True).to_numpy()
    out[KEY_COLUMN] = run.name
    return out


def fit_and_score(overrides: Mapping[str, Mapping[str, Any]], run: Run, seed: int = 0,
                  head: int = HEAD_ROWS) -> tuple[Flags, RunResult]:
    """Fit a Vigil model on the first `head` rows of `run` as the daemon fits a detector's first model, score
    every later row (a sequence model's first windows reach back into the fitted rows); flags and counts."""
    det = vigil_detector(overrides, list(SENSORS), seed)
    model, train, threshold = settings_for(det, first=True)     # a first model: an unscreened window
    fit_part, score_part, truth = split(run, head)
    context = needs_context(det)          # as the trainer
    fit_frame = _with_context(fit_part, run) if context else fit_part[list(SENSORS)]
    score_frame = _with_context(score_part, run) if context else score_part[list(SENSORS)]
    started = time.perf_counter()
    fitted = fit_model(fit_frame.reset_index(drop=True), det.feature_schema, model, train, threshold,
                       trim_fraction=det.training.first_window_trim)     # a first model: its window is unscreened
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    history = fit_frame.reset_index(drop=True) if fitted.needs_history else None
    scored = fitted.score(score_frame.reset_index(drop=True), history=history)
    score_s = time.perf_counter() - started
    flags = np.asarray(scored.is_outlier, dtype=bool)
    if len(flags) != len(score_frame):
        raise RuntimeError(f"{run.name}: {len(flags)} flags for {len(score_frame)} rows")
    anomalous = np.flatnonzero(truth == 1)
    first, last = (anomalous[0], anomalous[-1] + 1) if len(anomalous) else (len(truth), len(truth))
    result = RunResult(run.name, Counts.of(truth, flags), len(fit_frame), len(score_frame),
                       float(fitted.threshold.value), fit_s, score_s, int(fitted.report.get("trimmed_rows", 0)),
                       Counts.of(truth[:first], flags[:first]), Counts.of(truth[last:], flags[last:]))
    return flags, result


def evaluate(config_overrides: Mapping[str, Mapping[str, Any]], skab_runs: Sequence[Run], seed: int = 0,
             name: str = "custom", head: int = HEAD_ROWS,
             on_run: Callable[[RunResult], None] | None = None) -> Evaluation:
    """One configuration (overrides of the model, threshold and training sections) on every run of `skab_runs`,
    each fitted on its own first `head` rows; `Evaluation.counts()` pools them as SKAB's leaderboard does."""
    evaluation = Evaluation(name)
    for run in skab_runs:
        _, result = fit_and_score(config_overrides, run, seed, head)
        evaluation.results.append(result)
        if on_run is not None:
            on_run(result)
    return evaluation


@dataclass(frozen=True)
class Pick:
    """The outcome of one fold: the configuration with the best F1 on `dev`, and its counts on `confirm`."""

    dev: tuple[str, ...]
    confirm: tuple[str, ...]
    config: str
    dev_counts: Counts
    confirm_counts: Counts
    runner_up: str | None = None    # the next best on `dev`, and its F1 there
    runner_up_f1: float = math.nan


def select(evaluations: Mapping[str, Evaluation],
           folds: Sequence[tuple[tuple[str, ...], tuple[str, ...]]] = FOLDS) -> list[Pick]:
    """Per fold, the configuration with the highest pooled F1 on the development groups (ties: the earlier
    configuration) and its figures on the confirmation groups, where it was not chosen. Configurations that
    failed, and folds lacking runs of either part, are skipped."""
    picks = []
    usable = {name: e for name, e in evaluations.items() if e.error is None and e.results}
    for dev, confirm in folds:
        candidates = [(name, e) for name, e in usable.items() if e.has(dev) and e.has(confirm)]
        scored = [(name, e, f1(e.counts(dev))) for name, e in candidates]
        scored = [item for item in scored if not math.isnan(item[2])]
        if not scored:
            continue
        ranked = sorted(scored, key=lambda item: -item[2])        # stable: the earlier of equal values first
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        picks.append(Pick(dev, confirm, best[0], best[1].counts(dev), best[1].counts(confirm),
                          None if second is None else second[0], math.nan if second is None else second[2]))
    return picks


# --- report --------------------------------------------------------------------------------------------

def _fmt(c: Counts) -> str:
    def pct(x: float) -> str:
        return "-" if math.isnan(x) else f"{100 * x:.2f}"
    value = f1(c)
    return f"{'-' if math.isnan(value) else f'{value:.3f}'} / {pct(far(c))} / {pct(mar(c))}"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _machine() -> str:
    return (f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} on CPU with {torch.get_num_threads()} thread(s), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average at the end "
            f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min; the CPUs may be shared)")


def _group_sets(present: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    sets: list[tuple[str, tuple[str, ...]]] = [("all runs", tuple(present))]
    sets += [(g, (g,)) for g in present]
    if {"valve2", "other"} <= set(present):
        sets.append(("valve2 + other", ("valve2", "other")))
    return sets


def _anchor_counts(name: str, groups: Iterable[str]) -> Counts:
    return Counts.total(Counts(*ANCHOR_GROUPS[name][g]) for g in groups)


def _conv_ae(skab_runs: Sequence[Run], groups: Iterable[str]) -> Counts:
    """Conv-AE's counts over the runs of `skab_runs` in `groups` (its per-run predictions are known)."""
    chosen = set(groups)
    return Counts.total(Counts(*CONV_AE_RUNS[r.name]) for r in skab_runs if r.group in chosen)


def report(evaluations: Mapping[str, Evaluation], skab_runs: Sequence[Run], picks: Sequence[Pick], command: str,
           wall_s: float, seed: int) -> str:
    """The Markdown report."""
    present = [g for g in GROUPS if any(r.group == g for r in skab_runs)]
    sets = _group_sets(present)
    n_scored = sum(len(r.labels) - HEAD_ROWS for r in skab_runs)
    n_anomalies = sum(int(r.labels[HEAD_ROWS:].sum()) for r in skab_runs)
    per_group = ", ".join(f"{g}: {sum(r.group == g for r in skab_runs)}" for g in present)
    share = 100 * n_anomalies / max(n_scored, 1)
    partial_note = [] if len(skab_runs) == len(CONV_AE_RUNS) else [
        "", f"**A partial run ({len(skab_runs)} of {len(CONV_AE_RUNS)} runs)**: the anchors' figures here and in "
        "'Where Vigil loses' are over every run of each group, not only these; the Conv-AE figures of the selection "
        "and the per-run table are over these runs."]
    lines = [
        "# SKAB outlier-detection leaderboard protocol: Vigil",
        "",
        f"Command: `{command}`  ",
        f"Commit: `{_commit()}`  ",
        f"Machine: {_machine()}  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Wall time: {wall_s / 60:.1f} min ({len(evaluations)} configurations x {len(skab_runs)} runs, one process, "
        f"model.seed {seed})",
        "",
        "## Protocol (as SKAB's leaderboard; checked against waico/SKAB at b2c0d46c)",
        "",
        f"* {len(skab_runs)} labelled runs ({per_group}); the anomaly-free run is not used.",
        f"* Each run separately: fit on its first {HEAD_ROWS} rows (SKAB's `train_test_split(train_size=400, "
        "shuffle=False)`, whatever their labels: other/2 has 296 labelled anomalies among them), score every later "
        f"row: {n_scored} rows, {n_anomalies} of them anomalies ({share:.1f} %).",
        "* Features: all 8 sensor columns (the notebooks drop `anomaly` and `changepoint`; `datetime` is the index).",
        "* Metrics: point-wise, anomaly = positive; TP, FP, TN, FN summed over the scored rows of all runs, then "
        "F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP) (core/metrics.py `chp_score`, "
        "metric='binary'): pooled, not averaged per run. The same pooling gives the per-group figures.",
        "* Vigil: each run gets a fresh detector config (the 8 sensors numeric; the candidate's overrides) validated "
        "by detector.config; detector.trainer.settings_for; training.fit.fit_model with the first-window trim "
        "(training.first_window_trim, as for a detector's first model); flags = `is_outlier` of FittedModel.score "
        "at Vigil's own threshold, fitted on held-out normal-assumed rows, never on labels. Sequence models read the "
        "run's datetime, and the first scored rows take their windows from the fitted rows. The daemon would wait for "
        "training.min_records = 500 records before a first model; the protocol fixes 400 and fit_model accepts it.",
        "* Not done (unlike every leaderboard entry): no smoothing of the flags over neighbouring rows (Conv-AE "
        "flags a row only after 59 windows in a row exceed its limit, MSET smooths over 60 rows, T2+Q over 5). "
        "Vigil's k-of-n confirmation (alerting.confirm_k / confirm_n, off by default; the daemon applies it to "
        "`is_outlier` as records are scored) is not applied here.",
        "",
        "Figures below: F1 / FAR % / MAR %.",
        "",
        "## Anchors",
        "",
        f"Published figures: {SKAB_SOURCE}. Per group: the same figures recomputed from SKAB's stored predictions "
        "(results/results-*.pkl), which reproduce the published ones exactly when pooled over the 34 runs.",
        *partial_note,
        "",
        "| Method | F1 | FAR % | MAR % | " + " | ".join(n for n, _ in sets[1:]) + " | how it flags |",
        "|---|---|---|---|" + "---|" * (len(sets) - 1) + "---|",
    ]
    for anchor in ANCHORS:
        cells = [_fmt(_anchor_counts(anchor.name, groups)) for _, groups in sets[1:]]
        lines.append(f"| {anchor.name} | {anchor.f1:.2f} | {anchor.far_pct:.2f} | {anchor.mar_pct:.2f} | "
                     + " | ".join(cells) + f" | {anchor.how} |")
    labelled = {g: Counts.total(Counts.of(r.labels[HEAD_ROWS:], np.ones(len(r.labels) - HEAD_ROWS, dtype=bool))
                                for r in skab_runs if r.group == g) for g in present}
    every = [Counts.total(labelled[g] for g in groups) for _, groups in sets]
    lines.append(f"| every row flagged (computed here) | {f1(every[0]):.2f} | 100.00 | 0.00 | "
                 + " | ".join(_fmt(c) for c in every[1:]) + f" | a reference: {share:.0f} % "
                 f"of the scored rows are anomalies, so flagging every row already has F1 {f1(every[0]):.2f} |")
    lines += ["", "## Vigil candidates (every candidate, every group)", "",
              "| Configuration | overrides | " + " | ".join(n for n, _ in sets) + " | rows flagged % | fit + score s |",
              "|---|---|" + "---|" * len(sets) + "---|---|"]
    for name, evaluation in evaluations.items():
        overrides = CONFIGS[name][0] if name in CONFIGS else {}
        text = ", ".join(f"{s}.{k}={v}" for s, values in overrides.items() for k, v in values.items()) or "-"
        if evaluation.error is not None:
            lines.append(f"| {name} | {text} | FAILED: {evaluation.error} |" + " |" * (len(sets) + 1))
            continue
        cells = [_fmt(evaluation.counts(groups)) for _, groups in sets]
        lines.append(f"| {name} | {text} | " + " | ".join(cells)
                     + f" | {100 * _flagged(evaluation.counts()):.1f} | {evaluation.seconds:.0f} |")
    lines += ["", "Candidates: " + "; ".join(f"**{n}**: {CONFIGS[n][1]}" for n in evaluations if n in CONFIGS) + ".",
              *_reading(evaluations, every[0], share),
              *_false_alarms(evaluations, skab_runs),
              "", "## Selection: choose on one part of the runs, confirm on the other", "",
              "The configuration with the highest pooled F1 on the development runs is picked; its figure on the "
              "confirmation runs (never used to choose it) is the honest one. The table above also shows every "
              "candidate's figure on all runs: a best-of-candidates figure read from it is chosen on the runs it "
              "is reported on, and is optimistic.", ""]
    if not picks:
        lines.append("No fold could be evaluated (a part without runs, or every candidate failed).")
    else:
        lines += ["| develop on | pick | F1 there | runner-up there | confirm on | confirmed figure | Conv-AE there |",
                  "|---|---|---|---|---|---|---|"]
        for pick in picks:
            runner = "-" if pick.runner_up is None else f"{pick.runner_up} {pick.runner_up_f1:.3f}"
            lines.append(f"| {' + '.join(pick.dev)} | {pick.config} | {f1(pick.dev_counts):.3f} | {runner} | "
                         f"{' + '.join(pick.confirm)} | {_fmt(pick.confirm_counts)} | "
                         f"{_fmt(_conv_ae(skab_runs, pick.confirm))} |")
        crossed = Counts.total(p.confirm_counts for p in picks)
        covered = sorted({g for p in picks for g in p.confirm}, key=GROUPS.index)
        if len(picks) == len(FOLDS) and covered == present:
            lines += ["", f"Both folds together (each run judged by the configuration chosen on the other part, "
                      f"pooled over all {len(skab_runs)} runs): **{_fmt(crossed)}**, against Conv-AE "
                      f"{_fmt(_conv_ae(skab_runs, present))} on the same runs."]
    lines += _losses(evaluations, picks, present)
    return "\n".join(lines) + "\n"


def _flagged(c: Counts) -> float:
    """The share of the scored rows flagged."""
    n = c.tp + c.fp + c.tn + c.fn
    return (c.tp + c.fp) / n if n else math.nan


def _reading(evaluations: Mapping[str, Evaluation], every: Counts, share: float) -> list[str]:
    """How to read F1 on this data, and how far the realised false alarm rates are from the promised ones."""
    lines = ["", f"Reading the figures: {share:.0f} % of the scored rows are anomalies, so F1 rewards flagging much: "
             f"flagging every row scores F1 {f1(every):.2f} (FAR 100 %), and an F1 near or below that says little. "
             "FAR is the rate of false alarms on the runs' normal rows; each candidate's threshold promises its "
             "target_fpr on normal rows like its 400 training rows:"]
    for name, evaluation in evaluations.items():
        if evaluation.error is not None or not evaluation.results or name not in CONFIGS:
            continue
        target = vigil_detector(CONFIGS[name][0], list(SENSORS), 0).threshold.target_fpr
        lines.append(f"* {name}: FAR {100 * far(evaluation.counts()):.1f} % on all runs, target_fpr "
                     f"{100 * target:g} %; {100 * _flagged(evaluation.counts()):.1f} % of all scored rows flagged.")
    return lines


def drift(run: Run, head: int = HEAD_ROWS) -> pd.Series[float]:
    """Per sensor: |mean of the normal scored rows - mean of the fitted rows| / std of the fitted rows."""
    fit_part, score_part, truth = split(run, head)
    normal = score_part[list(SENSORS)][truth == 0]
    fitted = fit_part[list(SENSORS)]
    spread = fitted.std().where(fitted.std() > 0, 1.0)
    shift: pd.Series[float] = ((normal.mean() - fitted.mean()).abs() / spread).astype(float)
    return shift


def _false_alarms(evaluations: Mapping[str, Evaluation], skab_runs: Sequence[Run]) -> list[str]:
    """Where the false alarms fall (before the anomaly, or after it), and how far the normal rows drift."""
    lines = ["", "## Where the false alarms fall", "",
             "FAR on the scored normal rows before each run's first anomaly and after its last (pooled):", "",
             "| Configuration | FAR before the anomaly % | FAR after it % |", "|---|---|---|"]
    for name, evaluation in evaluations.items():
        if evaluation.error is None and evaluation.results:
            before = Counts.total(r.before for r in evaluation.results)
            after = Counts.total(r.after for r in evaluation.results)
            lines.append(f"| {name} | {100 * far(before):.1f} ({before.fp + before.tn} rows) | "
                         f"{100 * far(after):.1f} ({after.fp + after.tn} rows) |")
    shifts = pd.DataFrame([drift(r) for r in skab_runs if (r.labels[HEAD_ROWS:] == 0).any()])
    if len(shifts):
        lines += ["", "How far the normal scored rows lie from the fitted ones: |mean shift| in standard deviations "
                  "of the fitted rows, median (and maximum) over the runs. A threshold calibrated on the first "
                  f"{HEAD_ROWS} rows promises its rate on rows like them; a sensor that keeps drifting (the fluid "
                  "temperature, Thermocouple, rises through a run) carries the later normal rows past it.", "",
                  "| " + " | ".join(shifts.columns) + " |", "|" + "---|" * len(shifts.columns),
                  "| " + " | ".join(f"{shifts[c].median():.1f} ({shifts[c].max():.1f})" for c in shifts.columns)
                  + " |"]
    return lines


def _f1_or_0(c: Counts) -> float:
    value = f1(c)
    return 0.0 if math.isnan(value) else value


def _losses(evaluations: Mapping[str, Evaluation], picks: Sequence[Pick], present: Sequence[str]) -> list[str]:
    """Where Vigil loses: per group against each anchor, and per run against Conv-AE, for the picks."""
    lines = ["", "## Where Vigil loses", ""]
    chosen = {g: pick.config for pick in picks for g in pick.confirm}   # each group: the pick made without it
    if not chosen:
        return [*lines, "No selection was made."]
    lines += ["Per group, the configuration chosen on the other part against the anchors (F1 / FAR % / MAR %):", "",
              "| group | configuration | Vigil | " + " | ".join(a.name for a in ANCHORS)
              + " | higher F1 than Vigil | fewer false alarms than Vigil |",
              "|---|---|---|" + "---|" * len(ANCHORS) + "---|---|"]
    for g in present:
        if g not in chosen:
            continue
        config = chosen[g]
        mine = evaluations[config].counts((g,))
        theirs = [_anchor_counts(a.name, (g,)) for a in ANCHORS]
        better = [a.name for a, t in zip(ANCHORS, theirs, strict=True) if f1(t) > f1(mine)] or ["none"]
        quieter = [a.name for a, t in zip(ANCHORS, theirs, strict=True) if far(t) < far(mine)] or ["none"]
        lines.append(f"| {g} | {config} | {_fmt(mine)} | " + " | ".join(_fmt(t) for t in theirs)
                     + f" | {', '.join(better)} | {', '.join(quieter)} |")
    lines += ["", "Per run, against Conv-AE (F1; runs where Vigil's is lower first, by the gap):", "",
              "| run | configuration | Vigil F1 / FAR % / MAR % | Conv-AE F1 / FAR % / MAR % | threshold | trimmed |",
              "|---|---|---|---|---|---|"]
    rows = []
    for g in present:
        if g not in chosen:
            continue
        config = chosen[g]
        for result in evaluations[config].results:
            if result.group != g:
                continue
            leader = Counts(*CONV_AE_RUNS[result.name])
            gap = _f1_or_0(leader) - _f1_or_0(result.counts)
            rows.append((gap, f"| {result.name} | {config} | {_fmt(result.counts)} | {_fmt(leader)} | "
                              f"{result.threshold:.3g} | {result.trimmed} |"))
    rows.sort(key=lambda item: -item[0])
    lines += [text for _, text in rows]
    losing = sum(gap > 0 for gap, _ in rows)
    noisier = sum(far(r.counts) > far(Counts(*CONV_AE_RUNS[r.name])) for g in present if g in chosen
                  for r in evaluations[chosen[g]].results if r.group == g)
    lines += ["", f"Vigil's F1 is below Conv-AE's on {losing} of {len(rows)} runs; its false alarm rate is above "
              f"Conv-AE's on {noisier} of them."]
    return lines


# --- CLI -----------------------------------------------------------------------------------------------

def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--configs", type=_csv_list, default=list(CONFIGS),
                        help=f"candidate configurations, from: {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"only the runs {', '.join(QUICK_RUNS)}")
    parser.add_argument("--seed", type=int, default=0, help="model.seed of every fit (default 0)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"SKAB's data folder (default {DATA})")
    parser.add_argument("--output", type=Path, help="Markdown file to write; default bench/results/skab.md for a "
                        "full run (every run, every configuration), none for a partial one")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.configs) - set(CONFIGS)):
        parser.error(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    if args.output is None and not args.quick and args.configs == list(CONFIGS):
        args.output = RESULTS / "skab.md"
    return args


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(DaemonConfig().torch_threads)         # the daemon's default: one thread
    skab_runs = runs(args.data, QUICK_RUNS if args.quick else None)
    started = time.perf_counter()
    evaluations: dict[str, Evaluation] = {}
    for name in args.configs:
        print(f"{name}: {len(skab_runs)} runs", file=sys.stderr)

        def progress(result: RunResult, name: str = name) -> None:
            print(f"  {name} {result.name}: F1 {f1(result.counts):.3f} FAR {far(result.counts):.3f} "
                  f"MAR {mar(result.counts):.3f} ({result.fit_s + result.score_s:.1f} s)", file=sys.stderr)

        try:
            evaluations[name] = evaluate(CONFIGS[name][0], skab_runs, args.seed, name, on_run=progress)
        except Exception as exc:          # a long run goes on; the table shows the failure
            evaluations[name] = Evaluation(name, error=f"{exc.__class__.__name__}: {exc}")
            print(f"  {name}: FAILED {evaluations[name].error}", file=sys.stderr)
        else:
            e = evaluations[name]
            print(f"  {name}: all runs {_fmt(e.counts())} in {e.seconds:.0f} s", file=sys.stderr)
    wall_s = time.perf_counter() - started
    picks = select(evaluations)
    command = " ".join(["OMP_NUM_THREADS=1 .venv/bin/python bench/skab.py",
                        *(argv if argv is not None else sys.argv[1:])])
    text = report(evaluations, skab_runs, picks, command, wall_s, args.seed)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
