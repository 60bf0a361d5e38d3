"""NAB (Numenta Anomaly Benchmark) scoring: its corpus, scoring rules, normalisation and threshold optimiser.

A re-implementation of the rules in numenta/NAB (nab/sweeper.py, nab/scorer.py, nab/optimizer.py,
nab/runner.py `normalize`, config/profiles.json; the "sweep scoring" version NAB has used since 2019):

* the first `probation_length(n)` = min(floor(0.15 n), 750) rows of each file are ignored: a detection there
  neither earns nor costs anything, and a window that lies wholly inside it is not counted at all;
* a detection inside a labelled window earns A_TP * S(p) / S(-1), where p = -(last - i + 1) / width is its
  relative position (-1 at the window's first row) and S(x) = 2 sigmoid(-5x) - 1 the scaled sigmoid; only
  the best (earliest) detection of a window counts, later ones in the same window cost nothing;
* a detection outside every window costs A_FP * S(|i - last_prev| / (width_prev - 1)) (a negative number),
  measured from the end of the preceding window; S is -1 beyond 3 widths and before the first window;
* a counted window with no detection costs A_FN;
* a file's raw score is the sum of these; the corpus's raw score is the sum over files; the reported score
  is 100 (raw - null) / (perfect - null), null being the raw score of a detector that never detects and
  perfect A_TP times the number of windows (what detecting at every window's first row earns);
* a score-producing detector is scored at the one threshold (shared by every file, detection = score >=
  threshold) that maximises the corpus's raw score, per profile.

The optimiser is NAB's current one (since 2019 an exhaustive sweep over every distinct score, not the older
local search), computed with cumulative sums instead of a Python loop over rows. Departures from NAB's code,
none of which the NAB corpus reaches: after a window one row wide (NAB divides by zero) a false positive costs
the full A_FP; windows must not overlap (the loader sorts them; NAB would silently skip an out-of-order one);
scores must be finite (NAB does not check). Checked against NAB itself: at the thresholds of NAB's
config/thresholds.json this reproduces results/final_results.json for its detectors to 1e-9, and the
optimiser finds the same thresholds and raw scores as NAB's own Sweeper (some stored thresholds predate it).

Run from the repository root:
  .venv/bin/python bench/nab.py --baseline zscore      rolling z-score baseline (fixed |z| > 3 and optimised)
  .venv/bin/python bench/nab.py --scores DIR           score DIR/<category>/<file>.csv (timestamp, score,
                                                       optional is_outlier), laid out like NAB's data folder
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                 # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "MAX_TP",
    "NO_DETECTION",
    "PROBATION_PERCENT",
    "PROFILES",
    "FileScore",
    "NabResult",
    "Profile",
    "Series",
    "load_corpus",
    "load_scores_dir",
    "main",
    "normalise",
    "null_score",
    "optimise_threshold",
    "perfect_detections",
    "perfect_score",
    "probation_length",
    "rolling_zscore",
    "scaled_sigmoid",
    "score_at_threshold",
    "score_detections",
    "score_series",
    "sweep_scores",
    "zscore_flags",
    "zscore_to_nab",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

NAB_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab"
PROBATION_PERCENT = 0.15          # NAB's probationaryPercent
PROBATION_CAP_ROWS = 5000         # NAB caps the probationary period at PROBATION_PERCENT * 5000 rows
NO_DETECTION = 1.1                # NAB's first (highest) threshold: above every score in [0, 1], so nothing detected
DEFAULT_WINDOW = 288              # rolling z-score history: one day of NAB's usual 5-minute sampling
DEFAULT_LIMIT = 3.0               # rolling z-score flag: |z| > 3


@dataclass(frozen=True)
class Profile:
    """One of NAB's application profiles (config/profiles.json): the weights of the cost matrix.
    `a_tn` is part of NAB's profile but no part of its score."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float
    a_tn: float = 1.0


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", a_tp=1.0, a_fp=0.11, a_fn=1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", a_tp=1.0, a_fp=0.22, a_fn=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", a_tp=1.0, a_fp=0.11, a_fn=2.0),
}


def _profile(profile: Profile | str) -> Profile:
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown NAB profile {profile!r}; one of {sorted(PROFILES)}") from None


def probation_length(n: int, percent: float = PROBATION_PERCENT) -> int:
    """NAB's `_getProbationaryLength`: rows [0, result) of an n-row file are not scored."""
    return math.ceil(min(math.floor(percent * n), percent * PROBATION_CAP_ROWS))


def scaled_sigmoid(x: npt.ArrayLike) -> FloatArray:
    """NAB's `scaledSigmoid`: 2 sigmoid(-5x) - 1, and exactly -1 for x > 3 (elementwise)."""
    pos = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * pos)) - 1.0
    return np.asarray(np.where(pos > 3.0, -1.0, value), dtype=np.float64)


MAX_TP = float(scaled_sigmoid(-1.0))     # S at a window's first row: NAB's maxTP, 0.98661...


@dataclass(frozen=True, eq=False)
class Series:
    """One NAB file: its rows and its labelled windows as inclusive row ranges [first, last], in time order.
    `anomalies` are the rows of combined_labels.json's anomaly points (informational; NAB scores windows)."""

    name: str
    timestamps: npt.NDArray[np.datetime64]
    values: FloatArray
    windows: tuple[tuple[int, int], ...]
    anomalies: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.values)
        if len(self.timestamps) != n:
            raise ValueError(f"{self.name}: {len(self.timestamps)} timestamps but {n} values")
        previous_last = -1
        for first, last in self.windows:
            if not 0 <= first <= last < n:
                raise ValueError(f"{self.name}: window [{first}, {last}] is not a row range of a {n}-row series")
            if first <= previous_last:
                raise ValueError(f"{self.name}: windows must be in time order and must not overlap")
            previous_last = last

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def probation(self) -> int:
        """Rows [0, probation) are NAB's probationary period."""
        return probation_length(self.n)

    @cached_property
    def window_ids(self) -> IntArray:
        """Per row: the index of its window, -1 outside every window."""
        ids = np.full(self.n, -1, dtype=np.int64)
        for k, (first, last) in enumerate(self.windows):
            ids[first:last + 1] = k
        return ids

    @cached_property
    def counted_windows(self) -> tuple[int, ...]:
        """The windows NAB counts: those with at least one row after the probationary period."""
        return tuple(k for k, (_, last) in enumerate(self.windows) if last >= self.probation)

    @cached_property
    def sigmoid(self) -> FloatArray:
        """Per row, NAB's unweighted S: the relative position within the row's window (in a window), or
        past the preceding window's end (outside; -1 before the first window)."""
        i = np.arange(self.n)
        sig = np.full(self.n, -1.0)
        if not self.windows:
            return sig
        firsts = np.array([w[0] for w in self.windows])
        lasts = np.array([w[1] for w in self.windows])
        widths = (lasts - firsts + 1).astype(np.float64)
        ids = self.window_ids
        inside = ids >= 0
        k = ids[inside]
        sig[inside] = scaled_sigmoid(-(lasts[k] - i[inside] + 1) / widths[k])
        prev = np.searchsorted(lasts, i, side="left") - 1        # the last window ending before row i
        after = ~inside & (prev >= 0)
        k = prev[after]
        with np.errstate(divide="ignore"):                       # a one-row window: NAB divides by zero
            position = np.abs(lasts[k] - i[after]) / (widths[k] - 1.0)
        sig[after] = scaled_sigmoid(position)
        return sig


def sweep_scores(series: Series, profile: Profile | str) -> FloatArray:
    """NAB's per-row S(t) column: what a detection at each row would earn (in a window: A_TP S / S(-1))
    or cost (outside: A_FP S, negative). Probationary rows get a value too; the scorer ignores them."""
    prof = _profile(profile)
    sig = series.sigmoid
    return np.where(series.window_ids >= 0, sig * prof.a_tp / MAX_TP, sig * prof.a_fp)


@dataclass(frozen=True)
class FileScore:
    """One file's NAB score. tp/fp/fn/tn count scored rows as NAB's scorer does (a window row detected is a
    tp row); windows_detected/windows_missed count the counted windows."""

    name: str
    raw: float
    tp: int
    fp: int
    fn: int
    tn: int
    windows_detected: int
    windows_missed: int
    fp_cost: float              # the false positives' part of `raw` (<= 0)


@dataclass(frozen=True)
class NabResult:
    """A corpus's NAB score for one profile: `score` is the normalised figure NAB reports."""

    profile: Profile
    raw: float
    null: float
    perfect: float
    score: float
    files: dict[str, FileScore]
    threshold: float | None = None

    @property
    def windows_detected(self) -> int:
        return sum(f.windows_detected for f in self.files.values())

    @property
    def windows_counted(self) -> int:
        return sum(f.windows_detected + f.windows_missed for f in self.files.values())

    @property
    def false_positives(self) -> int:
        return sum(f.fp for f in self.files.values())


def _as_flags(name: str, detections: npt.ArrayLike, n: int) -> BoolArray:
    flags = np.asarray(detections)
    if flags.shape != (n,):
        raise ValueError(f"{name}: detections have shape {flags.shape}, the series has {n} rows")
    if flags.dtype != np.bool_:
        raise ValueError(f"{name}: detections must be a bool array, not {flags.dtype}")
    return flags


def _as_scores(name: str, scores: npt.ArrayLike, n: int) -> FloatArray:
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"{name}: scores have shape {values.shape}, the series has {n} rows")
    if not np.isfinite(values).all():      # NAB expects [0, 1] but does not check; some of its detectors stray
        raise ValueError(f"{name}: anomaly scores must be finite (expected in [0, 1])")
    return values


def _check_keys(corpus: Mapping[str, Series], per_file: Mapping[str, object]) -> None:
    missing, extra = sorted(set(corpus) - set(per_file)), sorted(set(per_file) - set(corpus))
    if missing or extra:
        raise ValueError(f"per-file arrays do not match the corpus: missing {missing[:5]}, unknown {extra[:5]}")


def score_series(series: Series, detections: npt.ArrayLike, profile: Profile | str) -> FileScore:
    """NAB's score of one file for a bool detection per row (probationary detections are ignored)."""
    prof = _profile(profile)
    flags = _as_flags(series.name, detections, series.n)
    weights = sweep_scores(series, prof)
    scored = np.arange(series.n) >= series.probation
    inside = series.window_ids >= 0
    detected = flags & scored
    false_pos = detected & ~inside
    fp_cost = float(weights[false_pos].sum())
    windows_part, hit, missed = 0.0, 0, 0
    for k in series.counted_windows:
        first, last = series.windows[k]
        first = max(first, series.probation)
        hits = detected[first:last + 1]
        if hits.any():
            windows_part += float(weights[first:last + 1][hits].max())   # the earliest detection's weight
            hit += 1
        else:
            windows_part -= prof.a_fn
            missed += 1
    return FileScore(
        name=series.name, raw=fp_cost + windows_part,
        tp=int((detected & inside).sum()), fp=int(false_pos.sum()),
        fn=int((~flags & scored & inside).sum()), tn=int((~flags & scored & ~inside).sum()),
        windows_detected=hit, windows_missed=missed, fp_cost=fp_cost)


def null_score(corpus: Mapping[str, Series], profile: Profile | str) -> float:
    """The raw score of a detector that never detects: -A_FN per counted window (NAB's null detector)."""
    return -_profile(profile).a_fn * sum(len(s.counted_windows) for s in corpus.values())


def perfect_score(corpus: Mapping[str, Series], profile: Profile | str) -> float:
    """NAB's perfect raw score: A_TP per window (runner.normalize's tpCount * tpWeight), which is what a
    detection at every window's first row earns when no window begins inside the probationary period."""
    return _profile(profile).a_tp * sum(len(s.windows) for s in corpus.values())


def normalise(raw: float, null: float, perfect: float) -> float:
    """100 (raw - null) / (perfect - null): 0 for the null detector, 100 for the perfect one; NaN when the
    corpus has no window (perfect == null)."""
    return math.nan if perfect == null else 100.0 * (raw - null) / (perfect - null)


def perfect_detections(series: Series) -> BoolArray:
    """One detection at the first row of every window."""
    flags = np.zeros(series.n, dtype=bool)
    flags[[first for first, _ in series.windows]] = True
    return flags


def score_detections(corpus: Mapping[str, Series], detections: Mapping[str, npt.ArrayLike],
                     profile: Profile | str) -> NabResult:
    """The corpus's NAB score for a detector's own flags (a bool array per file, keyed like `corpus`)."""
    prof = _profile(profile)
    _check_keys(corpus, detections)
    files = {name: score_series(series, detections[name], prof) for name, series in corpus.items()}
    raw = sum(f.raw for f in files.values())
    null, perfect = null_score(corpus, prof), perfect_score(corpus, prof)
    return NabResult(profile=prof, raw=raw, null=null, perfect=perfect, score=normalise(raw, null, perfect),
                     files=files)


def score_at_threshold(corpus: Mapping[str, Series], scores: Mapping[str, npt.ArrayLike], profile: Profile | str,
                       threshold: float) -> NabResult:
    """NAB's scorer: an anomaly score per row (in [0, 1]; any finite value works), detection = score >= threshold."""
    _check_keys(corpus, scores)
    flags = {name: _as_scores(name, scores[name], series.n) >= threshold for name, series in corpus.items()}
    return replace(score_detections(corpus, flags, profile), threshold=threshold)


def optimise_threshold(corpus: Mapping[str, Series], scores: Mapping[str, npt.ArrayLike],
                       profile: Profile | str) -> tuple[float, NabResult]:
    """NAB's optimiser: the one threshold (shared by all files) that maximises the corpus's raw score.

    Every distinct score of a scored (non-probationary) row is a candidate, plus NO_DETECTION (1.1; just above
    the highest score if that is not below 1.1), exactly
    the candidates of NAB's `calcScoreByThreshold` over the whole corpus; a tie goes to the highest threshold,
    as NAB's stable sort does. Instead of NAB's loop over rows, each row's marginal gain (an FP's cost, or how
    much it raises its window's best detection from -A_FN) is summed cumulatively in descending score order.
    """
    prof = _profile(profile)
    _check_keys(corpus, scores)
    values: list[FloatArray] = []
    gains: list[FloatArray] = []
    counted = 0
    for name, series in corpus.items():
        s = _as_scores(name, scores[name], series.n)
        weights = sweep_scores(series, prof)
        gain = np.where(series.window_ids >= 0, 0.0, weights)
        for k in series.counted_windows:
            first, last = series.windows[k]
            rows = np.arange(max(first, series.probation), last + 1)
            rows = rows[np.argsort(-s[rows], kind="stable")]
            best = np.maximum.accumulate(weights[rows])
            gain[rows] = best - np.concatenate(([-prof.a_fn], best[:-1]))
            counted += 1
        values.append(s[series.probation:])
        gains.append(gain[series.probation:])
    base = -prof.a_fn * counted
    all_values = np.concatenate(values) if values else np.empty(0)
    order = np.argsort(-all_values, kind="stable")
    ranked = all_values[order]
    totals = base + np.cumsum(np.concatenate(gains)[order]) if values else np.empty(0)
    group_ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True)) if ranked.size else np.empty(0, int)
    no_detection = NO_DETECTION if not ranked.size or ranked[0] < NO_DETECTION else np.nextafter(ranked[0], np.inf)
    thresholds = np.concatenate(([no_detection], ranked[group_ends]))
    raws = np.concatenate(([base], totals[group_ends]))
    threshold = float(thresholds[int(np.argmax(raws))])        # argmax: the first maximum, the highest threshold
    return threshold, score_at_threshold(corpus, scores, prof, threshold)


def rolling_zscore(values: npt.ArrayLike, window: int) -> FloatArray:
    """Per point, (x_t - mean) / std over the previous `window` points only (population std, no look-ahead).
    NaN for the first `window` points; with a constant history, 0 when x_t equals it and +-inf otherwise."""
    if window < 2:
        raise ValueError("window must be at least 2")
    x = np.asarray(values, dtype=np.float64)
    z = np.full(len(x), np.nan)
    if len(x) <= window:
        return z
    history = np.lib.stride_tricks.sliding_window_view(x[:-1], window)   # history[j] precedes x[j + window]
    chunk = 4096                                                         # bounds the temporaries' memory
    for start in range(0, len(history), chunk):
        block = history[start:start + chunk]
        constant = block.max(axis=1) == block.min(axis=1)          # exactly 0 std (the mean may be off an ulp)
        mean = np.where(constant, block[:, 0], block.mean(axis=1))
        std = np.where(constant, 0.0, np.sqrt(((block - mean[:, None]) ** 2).mean(axis=1)))
        diff = x[window + start:window + start + len(block)] - mean
        with np.errstate(divide="ignore", invalid="ignore"):
            part = diff / std
        z[window + start:window + start + len(block)] = np.where((std == 0) & (diff == 0), 0.0, part)
    return z


def zscore_to_nab(z: npt.ArrayLike) -> FloatArray:
    """|z| squashed into a NAB anomaly score in [0, 1): |z| / (1 + |z|), order-preserving (|z| = 3 -> 0.75);
    NaN (no history yet) -> 0, infinite -> 1."""
    a = np.abs(np.asarray(z, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        squashed = a / (1.0 + a)
    return np.asarray(np.where(np.isnan(a), 0.0, np.where(np.isinf(a), 1.0, squashed)), dtype=np.float64)


def zscore_flags(z: npt.ArrayLike, limit: float = DEFAULT_LIMIT) -> BoolArray:
    """The fixed-rule alarm |z| > limit (NaN never alarms)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(np.abs(np.asarray(z, dtype=np.float64)) > limit, dtype=bool)


def _parse_times(column: pd.Series) -> npt.NDArray[np.datetime64]:
    return np.asarray(pd.to_datetime(column, format="ISO8601").to_numpy(dtype="datetime64[ns]"))


def _rows_of(name: str, timestamps: npt.NDArray[np.datetime64], stamps: Sequence[str]) -> list[int]:
    """The first row of each timestamp (as NAB's `timestamps.index`), which must exist exactly."""
    rows = []
    for stamp in stamps:
        hit = np.flatnonzero(timestamps == pd.Timestamp(stamp).as_unit("ns").to_datetime64())
        if hit.size == 0:
            raise ValueError(f"{name}: label timestamp {stamp} is not a timestamp of the data file")
        rows.append(int(hit[0]))
    return rows


def load_corpus(root: Path = NAB_ROOT, windows_file: Path | None = None) -> dict[str, Series]:
    """NAB's corpus: every file of `root`/labels/combined_windows.json (or `windows_file`), read from
    `root`/data/<category>/<file>.csv, keyed by that relative name ("realKnownCause/nyc_taxi.csv"). The
    anomaly points of labels/combined_labels.json are attached when the file exists."""
    windows_path = windows_file or root / "labels" / "combined_windows.json"
    windows = json.loads(windows_path.read_text(encoding="utf-8"))
    labels_path = root / "labels" / "combined_labels.json"
    points = json.loads(labels_path.read_text(encoding="utf-8")) if labels_path.is_file() else {}
    corpus: dict[str, Series] = {}
    for name in sorted(windows):
        frame = pd.read_csv(root / "data" / name)
        timestamps = _parse_times(frame["timestamp"])
        limits = sorted(windows[name], key=lambda pair: pd.Timestamp(pair[0]))
        starts = _rows_of(name, timestamps, [a for a, _ in limits])
        ends = _rows_of(name, timestamps, [b for _, b in limits])
        corpus[name] = Series(
            name=name, timestamps=timestamps, values=frame["value"].to_numpy(dtype=np.float64),
            windows=tuple(zip(starts, ends, strict=True)),
            anomalies=tuple(_rows_of(name, timestamps, points.get(name, []))))
    return corpus


def _as_bool_column(column: pd.Series) -> BoolArray:
    if column.dtype == object:
        text = column.astype(str).str.strip().str.lower()
        if not text.isin(["true", "false", "1", "0"]).all():
            raise ValueError("is_outlier must be true/false or 1/0")
        return np.asarray(text.isin(["true", "1"]).to_numpy(), dtype=bool)
    return np.asarray(column.to_numpy() != 0, dtype=bool)


def load_scores_dir(directory: Path, corpus: Mapping[str, Series]
                    ) -> tuple[dict[str, FloatArray], dict[str, BoolArray] | None]:
    """Per-series CSVs laid out like NAB's data folder (DIR/realKnownCause/nyc_taxi.csv), each with a row per
    data row: timestamp, score in [0, 1] (or NAB's anomaly_score), optional is_outlier. Returns the scores
    and, when every file has is_outlier, the flags; files the corpus does not know are an error."""
    scores: dict[str, FloatArray] = {}
    flags: dict[str, BoolArray] = {}
    for path in sorted(directory.rglob("*.csv")):
        name = path.relative_to(directory).as_posix()
        if name not in corpus:
            raise ValueError(f"{path}: {name} is not a series of the NAB corpus")
        series = corpus[name]
        frame = pd.read_csv(path)
        if len(frame) != series.n:
            raise ValueError(f"{path}: {len(frame)} rows, the series has {series.n}")
        if "timestamp" in frame and not np.array_equal(_parse_times(frame["timestamp"]), series.timestamps):
            raise ValueError(f"{path}: timestamps differ from the series'")
        column = "score" if "score" in frame else "anomaly_score"
        scores[name] = _as_scores(name, frame[column].to_numpy(dtype=np.float64), series.n)
        if "is_outlier" in frame:
            flags[name] = _as_bool_column(frame["is_outlier"])
    if not scores:
        raise ValueError(f"no CSV files under {directory}")
    return scores, (flags if len(flags) == len(scores) else None)


def _table(profile: Profile, rows: Sequence[tuple[str, NabResult | None]]) -> str:
    lines = [f"### {profile.name} (A_TP {profile.a_tp}, A_FP {profile.a_fp}, A_FN {profile.a_fn})", "",
             "| detections | threshold | NAB score | raw | windows detected | FP rows |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, result in rows:
        label = name.replace("|", "\\|")             # a pipe would end the Markdown cell
        if result is None:
            lines.append(f"| {label} | - | - | - | - | - |")
            continue
        threshold = "-" if result.threshold is None else f"{result.threshold:.6g}"
        lines.append(f"| {label} | {threshold} | {result.score:.2f} | {result.raw:.2f} | "
                     f"{result.windows_detected}/{result.windows_counted} | {result.false_positives} |")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--baseline", choices=["zscore"], help="score a built-in baseline")
    what.add_argument("--scores", type=Path, metavar="DIR", help="score per-series CSVs laid out like NAB's data")
    parser.add_argument("--root", type=Path, default=NAB_ROOT, help=f"NAB folder (data/, labels/); {NAB_ROOT}")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="z-score history in points")
    parser.add_argument("--limit", type=float, default=DEFAULT_LIMIT, help="z-score flag: |z| > limit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    corpus = load_corpus(args.root)
    if args.baseline == "zscore":
        z = {name: rolling_zscore(series.values, args.window) for name, series in corpus.items()}
        scores = {name: zscore_to_nab(values) for name, values in z.items()}
        flags: dict[str, BoolArray] | None = {name: zscore_flags(values, args.limit) for name, values in z.items()}
        own_label, opt_label = f"|z| > {args.limit:g}", "optimised over |z|/(1+|z|)"
        print(f"## NAB: rolling z-score, previous {args.window} points ({len(corpus)} series)\n")
    else:
        scores, flags = load_scores_dir(args.scores, corpus)
        if len(scores) < len(corpus):
            print(f"note: {args.scores} has {len(scores)} of the {len(corpus)} NAB series; scored and normalised "
                  "over those only", file=sys.stderr)
        corpus = {name: corpus[name] for name in scores}
        own_label, opt_label = "own flags (is_outlier)", "optimised threshold"
        print(f"## NAB: {args.scores} ({len(corpus)} series)\n")
    for profile in PROFILES.values():
        own = score_detections(corpus, flags, profile) if flags is not None else None
        threshold, optimised = optimise_threshold(corpus, scores, profile)
        print(_table(profile, [(own_label, own), (opt_label, optimised)]))
        if args.baseline == "zscore" and threshold < 1.0:
            print(f"\n(optimised threshold {threshold:.6g} is |z| >= {threshold / (1.0 - threshold):.4g})")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
