"""Data and splits of the quality benchmark: the tabular sets (protocol A), NAB realKnownCause and SKAB."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "CORE_SETS",
    "DATA",
    "DataMissingError",
    "SeriesTask",
    "calibration_split",
    "lagged",
    "load_tabular",
    "nab_tasks",
    "require",
    "series_holdout",
    "skab_task",
    "standardise",
    "subsample",
    "tabular_split",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
# the 20 classic ODDS sets that shared/data/README.md marks "core", smallest first
CORE_SETS = ("wbc", "ionosphere", "breastw", "pima", "vowels", "letter", "cardio", "musk", "thyroid", "optdigits",
             "satimage-2", "satellite", "pendigits", "annthyroid", "mnist", "mammography", "shuttle", "smtp",
             "cover", "http")
TRAIN_SHARE = 0.6       # of the normal rows, per seed
HOLDOUT_SHARE = 0.2     # of the training rows, held back to set the baselines' thresholds
NAB_CATEGORY = "realKnownCause"
SKAB_HEAD_ROWS = 400    # of each labelled run, trained on (minus labelled anomalies)


class DataMissingError(RuntimeError):
    """The shared data folder (or one of its parts) is not where the benchmark looks for it."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"benchmark data not found at {path}: the quality benchmark reads the shared data sets "
                         f"from {DATA} (a 'shared' folder next to the repository); see shared/data/README.md")
        self.path = path


def require(path: Path) -> Path:
    if not path.exists():
        raise DataMissingError(path)
    return path


def load_tabular(name: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int8]]:
    """X [n, d] float32 (raw, unscaled) and y [n] int8 (1 = anomaly) of shared/data/tabular/NAME.npz."""
    with np.load(require(DATA / "tabular" / f"{name}.npz")) as data:
        return data["X"], data["y"]


def tabular_split(y: npt.ArrayLike, seed: int, train_share: float = TRAIN_SHARE) -> tuple[IntArray, IntArray]:
    """Row indices (train, test): the normals shuffled with `seed`, the first `train_share` of them to
    train on; the other normals and every anomaly to test. Both sorted."""
    labels = np.asarray(y)
    normals = np.flatnonzero(labels == 0)
    shuffled = np.random.default_rng(seed).permutation(normals)
    n_train = round(train_share * len(normals))
    test = np.concatenate([shuffled[n_train:], np.flatnonzero(labels == 1)])
    return np.sort(shuffled[:n_train]), np.sort(test)


def calibration_split(n: int, seed: int, holdout_share: float = HOLDOUT_SHARE) -> tuple[IntArray, IntArray]:
    """Positions (fit, holdout) of n training rows: a random `holdout_share` is held back, never fitted on."""
    order = np.random.default_rng([seed, 1]).permutation(n)
    n_holdout = max(1, round(holdout_share * n))
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def subsample(rows: IntArray, limit: int, seed: int) -> IntArray:
    """At most `limit` of `rows`, drawn without replacement with `seed` (all of them, in order, when fewer)."""
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng([seed, 2]).choice(rows, size=limit, replace=False))


def standardise(fit: FloatArray, *others: FloatArray) -> list[FloatArray]:
    """`fit` and `others` scaled with the mean and standard deviation of `fit` (a constant column: std 1)."""
    mean = fit.mean(axis=0)
    std = fit.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (fit, *others)]


def lagged(values: FloatArray, keys: npt.ArrayLike, lags: int) -> FloatArray:
    """Row t -> [x_{t-lags+1}, ..., x_t] (each [d], flattened), within each key; the first rows of a key
    repeat its first value where they lack history. values [n, d], keys [n] -> [n, lags * d]."""
    if lags == 1:
        return values
    key_array = np.asarray(keys)
    out = np.empty((len(values), lags * values.shape[1]), dtype=np.float64)
    for key in pd.unique(key_array):
        rows = np.flatnonzero(key_array == key)
        block = values[rows]
        padded = np.concatenate([np.repeat(block[:1], lags - 1, axis=0), block])
        windows = np.lib.stride_tricks.sliding_window_view(padded, lags, axis=0)   # [len, d, lags]
        out[rows] = windows.transpose(0, 2, 1).reshape(len(rows), -1)
    return out


@dataclass(frozen=True)
class SeriesTask:
    """A labelled time series (or several, one per key): which rows to fit on and which to score.

    frame has columns ts, key, the features and label (1 = anomaly), sorted by key then time.
    """

    name: str
    frame: pd.DataFrame
    features: tuple[str, ...]
    train: BoolArray
    test: BoolArray

    @property
    def values(self) -> FloatArray:
        return self.frame[list(self.features)].to_numpy(dtype=np.float64)

    @property
    def labels(self) -> npt.NDArray[np.int8]:
        return self.frame["label"].to_numpy(dtype=np.int8)


def series_holdout(task: SeriesTask, holdout_share: float = HOLDOUT_SHARE) -> tuple[BoolArray, BoolArray]:
    """(fit, holdout) masks: the last `holdout_share` of each key's training rows, in time, are held out."""
    fit, holdout = task.train.copy(), np.zeros_like(task.train)
    keys = task.frame["key"].to_numpy()
    for key in pd.unique(keys):
        rows = np.flatnonzero(task.train & (keys == key))
        n_holdout = round(holdout_share * len(rows))
        if n_holdout:
            fit[rows[-n_holdout:]] = False
            holdout[rows[-n_holdout:]] = True
    return fit, holdout


def nab_tasks(names: list[str] | None = None) -> list[SeriesTask]:
    """NAB realKnownCause: per series, fit on the first half's points outside every labelled window,
    score the second half (a point inside a window of combined_windows.json is an anomaly)."""
    root = require(DATA / "nab")
    windows = json.loads((root / "labels" / "combined_windows.json").read_text(encoding="utf-8"))
    tasks = []
    for path in sorted((root / "data" / NAB_CATEGORY).glob("*.csv")):
        if names is not None and path.stem not in names:
            continue
        frame = pd.read_csv(path, parse_dates=["timestamp"]).rename(columns={"timestamp": "ts"})
        label = np.zeros(len(frame), dtype=np.int8)
        for start, end in windows[f"{NAB_CATEGORY}/{path.name}"]:
            label[frame["ts"].between(pd.Timestamp(start), pd.Timestamp(end)).to_numpy()] = 1
        frame = frame.assign(key=path.stem, label=label)[["ts", "key", "value", "label"]]
        first_half = np.arange(len(frame)) < len(frame) // 2
        tasks.append(SeriesTask(path.stem, frame, ("value",), first_half & (label == 0), ~first_half))
    return tasks


def skab_task() -> SeriesTask:
    """SKAB: fit on the anomaly-free run and on the first 400 rows of each labelled run (minus rows
    labelled anomalous), score the rest of each labelled run. The key is the run ("valve1/0")."""
    root = require(DATA / "skab" / "data")
    parts, train, test = [], [], []
    for path in sorted(root.glob("*/*.csv")):
        run = pd.read_csv(path, sep=";", parse_dates=["datetime"]).rename(columns={"datetime": "ts"})
        free = "anomaly" not in run.columns
        label = np.zeros(len(run), dtype=np.int8) if free else run["anomaly"].to_numpy(dtype=np.int8)
        run = run.drop(columns=["anomaly", "changepoint"], errors="ignore").assign(
            key=f"{path.parent.name}/{path.stem}", label=label)
        head = np.ones(len(run), dtype=bool) if free else np.arange(len(run)) < SKAB_HEAD_ROWS
        parts.append(run)
        train.append(head & (label == 0))
        test.append(~head)
    frame = pd.concat(parts, ignore_index=True)
    features = tuple(c for c in frame.columns if c not in ("ts", "key", "label"))
    frame = frame[["ts", "key", *features, "label"]]
    return SeriesTask("skab", frame, features, np.concatenate(train), np.concatenate(test))
