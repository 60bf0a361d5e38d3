"""NAB scoring (bench/nab.py): hand-derived scores on small series, the optimiser, and the real corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.nab import (
    MAX_TP,
    NO_DETECTION,
    PROFILES,
    Series,
    load_corpus,
    load_scores_dir,
    main,
    normalise,
    null_score,
    optimise_threshold,
    perfect_detections,
    perfect_score,
    probation_length,
    rolling_zscore,
    scaled_sigmoid,
    score_at_threshold,
    score_detections,
    score_series,
    sweep_scores,
    zscore_flags,
    zscore_to_nab,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
NAB = SHARED / "data" / "nab"
STANDARD = PROFILES["standard"]


def make_series(n: int, windows: list[tuple[int, int]], name: str = "cat/s.csv") -> Series:
    stamps = pd.date_range("2020-01-01", periods=n, freq="5min").to_numpy(dtype="datetime64[ns]")
    return Series(name, stamps, np.zeros(n), tuple(windows))


def flags_at(n: int, *rows: int) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    flags[list(rows)] = True
    return flags


# one 200-row file (probation: rows 0-29) with one 10-row window at rows 100-109
N = 200
ONE = make_series(N, [(100, 109)])


def test_profiles_match_nab_profiles_json() -> None:
    assert {(p.name, p.a_tp, p.a_fp, p.a_fn, p.a_tn) for p in PROFILES.values()} == {
        ("standard", 1.0, 0.11, 1.0, 1.0),
        ("reward_low_FP_rate", 1.0, 0.22, 1.0, 1.0),
        ("reward_low_FN_rate", 1.0, 0.11, 2.0, 1.0),
    }


def test_probation_is_15_percent_capped_at_750_rows() -> None:
    assert probation_length(200) == 30
    assert probation_length(4032) == 604           # floor(604.8)
    assert probation_length(5000) == 750
    assert probation_length(22695) == 750          # the cap: 0.15 * 5000


def test_scaled_sigmoid_values() -> None:
    # 2 sigmoid(-5x) - 1 == tanh(-5x / 2)
    assert scaled_sigmoid(-1.0) == pytest.approx(math.tanh(2.5))
    assert abs(MAX_TP - 0.98661429815) < 1e-10
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661429815)
    assert scaled_sigmoid(3.0) == pytest.approx(math.tanh(-7.5))
    assert scaled_sigmoid(3.0001) == -1.0          # NAB: exactly -1 beyond 3


@pytest.mark.parametrize("profile", list(PROFILES))
def test_null_scores_0_and_perfect_scores_100(profile: str) -> None:
    corpus = {"a/x.csv": ONE, "a/y.csv": make_series(300, [(60, 80), (200, 239)], "a/y.csv")}
    p = PROFILES[profile]
    null = score_detections(corpus, {k: np.zeros(s.n, dtype=bool) for k, s in corpus.items()}, p)
    perfect = score_detections(corpus, {k: perfect_detections(s) for k, s in corpus.items()}, p)
    assert null.raw == pytest.approx(-3 * p.a_fn) and null.null == null.raw and null.score == 0.0
    assert perfect.raw == pytest.approx(3 * p.a_tp) == perfect.perfect and perfect.score == pytest.approx(100.0)
    assert perfect.windows_detected == 3 and perfect.false_positives == 0


def test_detection_at_window_start_earns_a_tp_and_at_its_end_the_sigmoid() -> None:
    start = score_series(ONE, flags_at(N, 100), STANDARD)
    assert start.raw == pytest.approx(1.0)
    # at the last row the relative position is -1/10: S = 2 sigmoid(0.5) - 1 = tanh(0.25), scaled by 1 / S(-1)
    end = score_series(ONE, flags_at(N, 109), STANDARD)
    assert end.raw == pytest.approx(math.tanh(0.25) / math.tanh(2.5)) == pytest.approx(0.24824155)
    # the middle (row 104: position -6/10)
    assert score_series(ONE, flags_at(N, 104), STANDARD).raw == pytest.approx(math.tanh(1.5) / math.tanh(2.5))
    assert end.windows_detected == 1 and end.fp == 0 and end.tp == 1 and end.fn == 9
    # normalised on this one-window corpus: null -1, perfect 1
    result = score_detections({ONE.name: ONE}, {ONE.name: flags_at(N, 109)}, STANDARD)
    assert result.score == pytest.approx(100 * (end.raw + 1) / 2)


def test_false_positive_right_after_a_window_costs_less_than_one_far_away() -> None:
    base = -1.0                                                     # the missed window
    near = score_series(ONE, flags_at(N, 110), STANDARD)            # 1 row past: position 1 / (10 - 1)
    assert near.raw == pytest.approx(base + 0.11 * math.tanh(-5 / 18)) == pytest.approx(-1.0 - 0.11 * 0.27084712)
    far = score_series(ONE, flags_at(N, 140), STANDARD)             # 31 rows past: position 31/9 > 3 -> -1
    assert far.raw == pytest.approx(base - 0.11)
    before = score_series(ONE, flags_at(N, 50), STANDARD)           # before any window: -1
    assert before.raw == pytest.approx(base - 0.11)
    low_fp = score_series(ONE, flags_at(N, 110), PROFILES["reward_low_FP_rate"])
    assert low_fp.raw == pytest.approx(base + 0.22 * math.tanh(-5 / 18))
    assert near.fp == far.fp == 1 and near.fp_cost > far.fp_cost


def test_false_positive_is_measured_from_the_preceding_window() -> None:
    series = make_series(N, [(40, 49), (150, 159)])                 # row 140 is 10 rows before the second
    s = score_series(series, flags_at(N, 140), STANDARD)            # ... but 91 past the first: full cost
    assert s.raw == pytest.approx(-2.0 - 0.11)
    weights = sweep_scores(series, STANDARD)
    assert weights[50] == pytest.approx(0.11 * math.tanh(-5 / 18))
    assert weights[160] == pytest.approx(0.11 * math.tanh(-5 / 18))
    # after a one-row window NAB divides by zero; here the false positive costs the full A_FP
    single = make_series(N, [(100, 100)])
    assert sweep_scores(single, STANDARD)[100] == pytest.approx(1.0)
    assert sweep_scores(single, STANDARD)[101] == pytest.approx(-0.11)


def test_detections_in_the_probationary_period_are_ignored() -> None:
    assert score_series(ONE, flags_at(N, 10), STANDARD).raw == pytest.approx(-1.0)
    assert score_series(ONE, flags_at(N, 29), STANDARD).fp == 0
    assert score_series(ONE, flags_at(N, 30), STANDARD).raw == pytest.approx(-1.11)   # first scored row
    # a window that starts inside the probation: only its scored rows can detect it
    series = make_series(N, [(20, 39)])
    assert score_series(series, flags_at(N, 20), STANDARD).raw == pytest.approx(-1.0)
    assert score_series(series, flags_at(N, 30), STANDARD).raw == pytest.approx(
        math.tanh(2.5 * 10 / 20) / math.tanh(2.5))                 # position -(39 - 30 + 1) / 20
    # a window wholly inside it is not counted at all (NAB), though perfect still counts it
    inside = make_series(N, [(5, 15), (100, 109)])
    assert inside.counted_windows == (1,)
    assert null_score({"x": inside}, STANDARD) == -1.0 and perfect_score({"x": inside}, STANDARD) == 2.0


def test_two_detections_in_one_window_count_once() -> None:
    once = score_series(ONE, flags_at(N, 100), STANDARD)
    twice = score_series(ONE, flags_at(N, 100, 105), STANDARD)
    every_row = score_series(ONE, flags_at(N, *range(100, 110)), STANDARD)
    assert once.raw == twice.raw == every_row.raw == pytest.approx(1.0)
    assert twice.windows_detected == 1 and twice.tp == 2 and every_row.tp == 10
    # the earliest detection is the one that counts
    assert score_series(ONE, flags_at(N, 103, 108), STANDARD).raw == pytest.approx(
        math.tanh(2.5 * 7 / 10) / math.tanh(2.5))


def test_row_counts_and_input_checks() -> None:
    s = score_series(ONE, flags_at(N, 10, 60, 101, 150), STANDARD)
    assert (s.tp, s.fp, s.fn, s.tn) == (1, 2, 9, 170 - 10 - 2)
    with pytest.raises(ValueError, match="bool"):
        score_series(ONE, np.zeros(N), STANDARD)
    with pytest.raises(ValueError, match="shape"):
        score_series(ONE, np.zeros(N - 1, dtype=bool), STANDARD)
    with pytest.raises(ValueError, match="overlap"):
        make_series(N, [(100, 120), (110, 130)])
    with pytest.raises(ValueError, match="match the corpus"):
        score_detections({ONE.name: ONE}, {}, STANDARD)


def test_optimiser_finds_the_threshold_of_the_perfect_detector() -> None:
    other = make_series(300, [(60, 80), (200, 239)], "a/y.csv")
    corpus = {ONE.name: ONE, other.name: other}
    rng = np.random.default_rng(0)
    scores = {}
    for name, series in corpus.items():
        s = rng.uniform(0.0, 0.3, series.n)          # background
        s[rng.choice(np.arange(series.probation, series.n), 5, replace=False)] = 0.5   # false alarms
        for first, last in series.windows:
            s[first + 1:last + 1] = 0.7              # later rows of each window: free once it is detected
            s[first] = 0.9                           # the window's first row
        s[:series.probation] = 0.99                  # the probation's scores are never candidates
        scores[name] = s
    for profile in PROFILES.values():
        threshold, result = optimise_threshold(corpus, scores, profile)
        assert threshold == 0.9                      # 0.7 scores the same: the tie goes to the higher threshold
        assert result.score == pytest.approx(100.0) and result.threshold == 0.9
        assert result.raw == pytest.approx(3 * profile.a_tp)


def test_optimiser_prefers_no_detection_when_every_score_hurts() -> None:
    corpus = {ONE.name: ONE}
    scores = np.zeros(N)
    scores[150] = 0.8                                # one false alarm, nothing in the window
    threshold, result = optimise_threshold(corpus, {ONE.name: scores}, STANDARD)
    assert threshold == NO_DETECTION and result.score == 0.0


def test_optimiser_is_the_best_of_an_exhaustive_search() -> None:
    rng = np.random.default_rng(1)
    corpus = {f"c/{k}.csv": make_series(n, w, f"c/{k}.csv") for k, (n, w) in enumerate(
        [(200, [(50, 59), (120, 150)]), (150, [(100, 100), (102, 110)]), (120, []), (300, [(40, 90)])])}
    for trial in range(3):
        scores = {name: np.round(rng.beta(0.5, 3.0, s.n), 2) for name, s in corpus.items()}   # many ties
        for name, s in corpus.items():
            for first, _ in s.windows:
                scores[name][first + trial * 2] = rng.uniform(0.3, 1.0)
        for profile in PROFILES.values():
            threshold, result = optimise_threshold(corpus, scores, profile)
            candidates = np.unique(np.concatenate([v[corpus[k].probation:] for k, v in scores.items()]))
            raws = [score_at_threshold(corpus, scores, profile, t).raw for t in candidates]
            assert result.raw == pytest.approx(max([*raws, null_score(corpus, profile)]), abs=1e-12)
            assert result.raw == pytest.approx(score_at_threshold(corpus, scores, profile, threshold).raw)


def nab_row_loop(series: Series, a_tp: float, a_fp: float) -> list[float]:
    """NAB's calcSweepScore, row by row, for comparing the vectorised per-row weights."""
    out: list[float] = []
    current: tuple[int, int] | None = None
    previous: tuple[int, int] | None = None          # the last window left: (its last row, its width)
    windows = list(series.windows)
    for i in range(series.n):
        if windows and i == windows[0][0]:
            current = windows.pop(0)
        if current is not None:
            x = -(current[1] - i + 1) / (current[1] - current[0] + 1)
            out.append((-1.0 if x > 3 else 2 / (1 + math.exp(5 * x)) - 1) * a_tp / MAX_TP)
        else:
            x = math.inf if previous is None else abs(previous[0] - i) / (previous[1] - 1)
            out.append((-1.0 if x > 3 else 2 / (1 + math.exp(5 * x)) - 1) * a_fp)
        if current is not None and i == current[1]:
            previous, current = (i, current[1] - current[0] + 1), None
    return out


def test_sweep_scores_match_nabs_row_loop() -> None:
    series = make_series(400, [(45, 70), (71, 80), (150, 151), (300, 399)])
    for profile in PROFILES.values():
        expected = nab_row_loop(series, profile.a_tp, profile.a_fp)
        assert np.allclose(sweep_scores(series, profile), expected, rtol=1e-12, atol=1e-15)


def test_normalise() -> None:
    assert normalise(-116.0, -116.0, 116.0) == 0.0
    assert normalise(116.0, -116.0, 116.0) == 100.0
    assert normalise(0.0, -116.0, 116.0) == 50.0
    assert math.isnan(normalise(0.0, 0.0, 0.0))


def test_rolling_zscore_uses_only_the_previous_points() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0, 5.0])
    z = rolling_zscore(values, 3)
    assert np.isnan(z[:3]).all()
    history = values[0:3]
    assert z[3] == pytest.approx((4.0 - history.mean()) / history.std())
    assert z[4] == pytest.approx((100.0 - 3.0) / np.std([2.0, 3.0, 4.0]))
    assert z[5] == pytest.approx((5.0 - np.mean([3, 4, 100])) / np.std([3, 4, 100]))
    # no look-ahead: changing a later value leaves earlier z-scores alone
    changed = values.copy()
    changed[5] = -50.0
    assert np.array_equal(rolling_zscore(changed, 3)[:5], z[:5], equal_nan=True)
    # a constant history: 0 for the same value, infinite for any other
    flat = rolling_zscore(np.array([0.1] * 5 + [0.1, 0.2]), 5)
    assert flat[5] == 0.0 and flat[6] == math.inf
    # a long series agrees with pandas' rolling window (chunked internally)
    x = np.random.default_rng(2).normal(size=10_000).cumsum()
    roll = pd.Series(x).shift(1).rolling(50)
    expected = ((pd.Series(x) - roll.mean()) / roll.std(ddof=0)).to_numpy()
    assert np.allclose(rolling_zscore(x, 50), expected, equal_nan=True, rtol=1e-6)


def test_zscore_to_nab_scores_and_flags() -> None:
    z = np.array([np.nan, 0.0, 3.0, -3.0, 3.5, math.inf, -math.inf])
    assert np.allclose(zscore_to_nab(z), [0.0, 0.0, 0.75, 0.75, 3.5 / 4.5, 1.0, 1.0])
    assert zscore_flags(z).tolist() == [False, False, False, False, True, True, True]
    assert np.all(np.diff(zscore_to_nab(np.linspace(0, 50, 100))) > 0)       # order-preserving


def test_load_scores_dir_reads_a_nab_shaped_folder(tmp_path: Path) -> None:
    corpus = {"cat/s.csv": make_series(N, [(100, 109)], "cat/s.csv")}
    (tmp_path / "cat").mkdir()
    score = np.zeros(N)
    score[100] = 0.9
    frame = pd.DataFrame({"timestamp": pd.Series(corpus["cat/s.csv"].timestamps).dt.strftime("%Y-%m-%d %H:%M:%S"),
                          "score": score, "is_outlier": score > 0.5})
    frame.to_csv(tmp_path / "cat" / "s.csv", index=False)
    scores, flags = load_scores_dir(tmp_path, corpus)
    assert flags is not None and flags["cat/s.csv"].sum() == 1
    assert score_detections(corpus, flags, STANDARD).score == pytest.approx(100.0)
    assert optimise_threshold(corpus, scores, STANDARD)[0] == 0.9
    frame.drop(columns="is_outlier").iloc[:-1].to_csv(tmp_path / "cat" / "s.csv", index=False)
    with pytest.raises(ValueError, match="rows"):
        load_scores_dir(tmp_path, corpus)


# ---- the real corpus ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus() -> dict[str, Series]:
    if not (NAB / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB data not found under {SHARED} (the shared folder beside the repository)")
    return load_corpus(NAB)


def test_corpus_loads_58_files_with_nabs_windows(corpus: dict[str, Series]) -> None:
    windows = json.loads((NAB / "labels" / "combined_windows.json").read_text(encoding="utf-8"))
    assert len(corpus) == 58 and set(corpus) == set(windows)
    assert {name: len(s.windows) for name, s in corpus.items()} == {k: len(v) for k, v in windows.items()}
    assert sum(len(s.windows) for s in corpus.values()) == 116
    taxi = corpus["realKnownCause/nyc_taxi.csv"]
    assert taxi.n == 10320 and len(taxi.windows) == 5
    first, last = taxi.windows[0]
    assert pd.Timestamp(taxi.timestamps[first]) == pd.Timestamp("2014-10-30 15:30:00")
    assert pd.Timestamp(taxi.timestamps[last]) == pd.Timestamp("2014-11-03 22:30:00")
    assert sum(len(s.anomalies) for s in corpus.values()) == 120          # combined_labels.json's points


def test_corpus_null_is_0_and_perfect_100(corpus: dict[str, Series]) -> None:
    for profile in PROFILES.values():
        null = score_detections(corpus, {k: np.zeros(s.n, dtype=bool) for k, s in corpus.items()}, profile)
        assert null.raw == pytest.approx(-116 * profile.a_fn) and null.score == 0.0    # NAB's null detector
        perfect = score_detections(corpus, {k: perfect_detections(s) for k, s in corpus.items()}, profile)
        assert perfect.score == pytest.approx(100.0)


def test_cli_zscore_baseline_prints_a_table_per_profile(corpus: dict[str, Series],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--baseline", "zscore", "--root", str(NAB)]) == 0
    out = capsys.readouterr().out
    for name in PROFILES:
        assert f"### {name}" in out
    assert out.count("| optimised") == 3 and out.count("\\|z\\| > 3") == 3


def test_cli_scores_a_partial_directory(corpus: dict[str, Series], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    taxi = corpus["realKnownCause/nyc_taxi.csv"]
    (tmp_path / "realKnownCause").mkdir()
    flags = perfect_detections(taxi)
    pd.DataFrame({"timestamp": pd.Series(taxi.timestamps).dt.strftime("%Y-%m-%d %H:%M:%S"),
                  "score": np.where(flags, 0.8, 0.1), "is_outlier": flags.astype(int)}
                 ).to_csv(tmp_path / "realKnownCause" / "nyc_taxi.csv", index=False)
    assert main(["--scores", str(tmp_path), "--root", str(NAB)]) == 0
    captured = capsys.readouterr()
    assert "1 of the 58" in captured.err
    assert captured.out.count("| own flags (is_outlier) | - | 100.00 | 5.00 | 5/5 | 0 |") == 3
    assert captured.out.count("| optimised threshold | 0.8 | 100.00 |") == 3
