"""SKAB leaderboard protocol (bench/skab.py): metrics by hand, the loader against the files, the 400-row split."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import bench.skab as skab
from bench.skab import (
    ANCHOR_GROUPS,
    ANCHORS,
    CONV_AE_RUNS,
    GROUPS,
    HEAD_ROWS,
    SENSORS,
    Counts,
    Evaluation,
    Run,
    RunResult,
    drift,
    evaluate,
    f1,
    far,
    mar,
    report,
    runs,
    select,
    split,
)
from training.fit import KEY_COLUMN, TS_COLUMN

SHARED = Path(__file__).resolve().parents[3] / "shared"
DATA = SHARED / "data" / "skab" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"SKAB data not found at {DATA} (../shared is absent)")

# (rows, labelled anomalies, anomalies among the first 400 rows) of each file
FILES = {
    "valve1/0": (1147, 401, 0), "valve1/1": (1145, 402, 0), "valve1/2": (1075, 337, 0), "valve1/3": (1148, 404, 0),
    "valve1/4": (1095, 349, 0), "valve1/5": (1154, 403, 0), "valve1/6": (1154, 405, 0), "valve1/7": (1094, 405, 0),
    "valve1/8": (1144, 400, 0), "valve1/9": (1148, 402, 0), "valve1/10": (1146, 401, 0), "valve1/11": (1141, 399, 0),
    "valve1/12": (1140, 399, 0), "valve1/13": (1140, 399, 0), "valve1/14": (1139, 399, 0), "valve1/15": (1150, 404, 0),
    "valve2/0": (1125, 394, 0), "valve2/1": (1063, 333, 0), "valve2/2": (1129, 395, 0), "valve2/3": (995, 395, 0),
    "other/1": (745, 188, 0), "other/2": (780, 384, 296), "other/3": (1137, 398, 0), "other/4": (1191, 395, 0),
    "other/5": (1155, 410, 0), "other/6": (1147, 402, 0), "other/7": (1090, 347, 0), "other/8": (1147, 403, 0),
    "other/9": (1144, 401, 0), "other/10": (1327, 586, 0), "other/11": (1190, 451, 0), "other/12": (1048, 309, 0),
    "other/13": (923, 265, 0), "other/14": (905, 302, 0),
}


@pytest.fixture(scope="module")
def skab_runs() -> list[Run]:
    return runs(DATA)


# --- metrics -------------------------------------------------------------------------------------------

def test_metrics_by_hand() -> None:
    c = Counts.of([1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0, 0])
    assert c == Counts(tp=2, fp=1, tn=4, fn=1)
    assert f1(c) == pytest.approx(2 / (2 + (1 + 1) / 2))          # 2/3
    assert far(c) == pytest.approx(1 / 5)
    assert mar(c) == pytest.approx(1 / 3)


def test_metrics_edge_cases() -> None:
    no_anomalies_flags = Counts.of([0, 0, 0, 0], [1, 0, 0, 0])
    assert (f1(no_anomalies_flags), far(no_anomalies_flags)) == (0.0, 0.25)
    assert math.isnan(mar(no_anomalies_flags))                      # no anomaly to miss
    nothing = Counts.of([0, 0, 0], [0, 0, 0])
    assert math.isnan(f1(nothing)) and far(nothing) == 0.0 and math.isnan(mar(nothing))
    silent = Counts.of([1, 1, 0], [0, 0, 0])                        # a null detector
    assert (f1(silent), far(silent), mar(silent)) == (0.0, 0.0, 1.0)
    everything = Counts.of([1, 0, 0, 0], [1, 1, 1, 1])
    assert f1(everything) == pytest.approx(0.4) and (far(everything), mar(everything)) == (1.0, 0.0)
    only_anomalies = Counts.of([1, 1], [1, 0])
    assert math.isnan(far(only_anomalies)) and f1(only_anomalies) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels but"):
        Counts.of([1, 0], [1])


def test_pooling_sums_counts_before_the_ratio() -> None:
    a, b = Counts.of([1, 1, 0, 0], [1, 1, 0, 0]), Counts.of([1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0])
    pooled = Counts.total([a, b])
    assert pooled == Counts(tp=2, fp=3, tn=4, fn=1)
    assert f1(pooled) == pytest.approx(2 / 4)                 # not the mean of the runs' F1 (1 and 0)
    assert far(pooled) == pytest.approx(3 / 7)


def test_anchor_data_reproduces_the_published_figures() -> None:
    for anchor in ANCHORS:
        pooled = Counts.total(Counts(*ANCHOR_GROUPS[anchor.name][g]) for g in GROUPS)
        assert pooled.tp + pooled.fp + pooled.tn + pooled.fn == 23801
        assert pooled.tp + pooled.fn == 12771
        assert (round(f1(pooled), 2), round(100 * far(pooled), 2), round(100 * mar(pooled), 2)) == (
            anchor.f1, anchor.far_pct, anchor.mar_pct), anchor.name
    for group in GROUPS:
        per_run = Counts.total(Counts(*c) for name, c in CONV_AE_RUNS.items() if name.startswith(f"{group}/"))
        assert per_run == Counts(*ANCHOR_GROUPS["Conv-AE"][group])


# --- loader and split ----------------------------------------------------------------------------------

@needs_data
def test_loader_gives_the_34_runs_of_the_files(skab_runs: list[Run]) -> None:
    assert len(skab_runs) == 34
    assert {r.name: (len(r.frame), int(r.labels.sum()), int(r.labels[:HEAD_ROWS].sum())) for r in skab_runs} == FILES
    assert [r.group for r in skab_runs] == ["valve1"] * 16 + ["valve2"] * 4 + ["other"] * 14
    for run in skab_runs:
        assert list(run.frame.columns) == ["datetime", *SENSORS]
        assert set(np.unique(run.labels)) == {0, 1}
        assert run.frame["datetime"].is_monotonic_increasing
    selected = runs(DATA, ["other/2", "valve1/10"])
    assert [r.name for r in selected] == ["valve1/10", "other/2"]
    with pytest.raises(ValueError, match="no SKAB runs"):
        runs(DATA, ["valve3/0"])


@needs_data
def test_split_fits_the_first_400_rows_and_scores_every_later_one(skab_runs: list[Run]) -> None:
    for run in skab_runs:
        fit_part, score_part, truth = split(run)
        assert len(fit_part) == HEAD_ROWS and len(score_part) == len(run.frame) - HEAD_ROWS
        pd.testing.assert_frame_equal(pd.concat([fit_part, score_part]), run.frame)
        assert fit_part["datetime"].max() < score_part["datetime"].min()
        np.testing.assert_array_equal(truth, run.labels[HEAD_ROWS:])
    scored = sum(len(split(r)[1]) for r in skab_runs)
    assert scored == 23801 and sum(int(split(r)[2].sum()) for r in skab_runs) == 12771


def test_split_refuses_a_run_without_rows_to_score() -> None:
    with pytest.raises(ValueError, match="not more than 400"):
        split(_synthetic("valve1/0", 400))


# --- evaluate: what is fitted on and what is scored, with a stand-in model --------------------------------

def _synthetic(name: str, n: int, anomalies: slice = slice(0, 0)) -> Run:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(n, len(SENSORS))), columns=list(SENSORS))
    frame.insert(0, "datetime", pd.date_range("2020-03-09 10:00:00", periods=n, freq="1s"))
    labels = np.zeros(n, dtype=np.int8)
    labels[anomalies] = 1
    return Run(name, frame, labels)


class _Threshold:
    value = 1.5


class _Scored:
    def __init__(self, flags: np.ndarray[Any, Any]) -> None:
        self.is_outlier = flags


class _Stub:
    """Stands in for a FittedModel: remembers what it was fitted on and scored, flags rows whose first sensor
    is above 1.5."""

    def __init__(self, frame: pd.DataFrame, window: int, calls: dict[str, Any]) -> None:
        calls["fit"], self.calls, self.needs_history = frame, calls, window > 1
        self.threshold, self.report = _Threshold(), {"trimmed_rows": 3}

    def score(self, frame: pd.DataFrame, history: pd.DataFrame | None = None) -> _Scored:
        self.calls["score"], self.calls["history"] = frame, history
        return _Scored(frame[SENSORS[0]].to_numpy() > 1.5)


@pytest.mark.parametrize("window", [1, 16])
def test_evaluate_fits_the_head_and_scores_the_tail(monkeypatch: pytest.MonkeyPatch, window: int) -> None:
    calls: dict[str, Any] = {}

    def fake_fit(frame: pd.DataFrame, schema: Any, model: Any, train: Any, threshold: Any,
                 trim_fraction: float = 0.0) -> _Stub:
        calls["window"], calls["trim"], calls["threshold"] = model.window, trim_fraction, threshold
        calls["features"] = [f.name for f in schema.features]
        return _Stub(frame, model.window, calls)

    monkeypatch.setattr(skab, "fit_model", fake_fit)
    run = _synthetic("valve2/7", 700, slice(500, 600))
    overrides: dict[str, dict[str, Any]] = {"model": {"window": window, "arch": "conv"},
                                            "threshold": {"target_fpr": 0.05}}
    evaluation = evaluate(overrides, [run], name="x")
    fitted, scored = calls["fit"], calls["score"]
    assert calls["features"] == list(SENSORS) and calls["window"] == window
    assert calls["trim"] == 0.02 and calls["threshold"].target_fpr == 0.05      # the daemon's first-model trim
    np.testing.assert_array_equal(fitted[list(SENSORS)].to_numpy(), run.frame[list(SENSORS)].to_numpy()[:400])
    np.testing.assert_array_equal(scored[list(SENSORS)].to_numpy(), run.frame[list(SENSORS)].to_numpy()[400:])
    assert list(fitted[TS_COLUMN]) == list(pd.to_datetime(run.frame["datetime"][:400], utc=True))
    assert set(fitted[KEY_COLUMN]) == {"valve2/7"}
    if window > 1:         # the first scored rows take their windows from the fitted rows
        pd.testing.assert_frame_equal(calls["history"], fitted)
    else:
        assert calls["history"] is None
    (result,) = evaluation.results
    flags = run.frame[SENSORS[0]].to_numpy()[400:] > 1.5
    assert result.counts == Counts.of(run.labels[400:], flags)
    assert (result.n_fit, result.n_scored, result.threshold, result.trimmed) == (400, 300, 1.5, 3)
    # scored rows 100-199 are the anomaly: the normal rows before it and after it
    assert result.before == Counts.of(np.zeros(100), flags[:100]) and result.before.tn + result.before.fp == 100
    assert result.after == Counts.of(np.zeros(100), flags[200:]) and result.after.tn + result.after.fp == 100
    assert evaluation.counts() == result.counts and evaluation.counts(["valve1"]) == Counts()


# --- selection and report ------------------------------------------------------------------------------

def _evaluation(name: str, by_run: dict[str, Counts]) -> Evaluation:
    return Evaluation(name, [RunResult(run, c, 400, 1, 1.0, 0.0, 0.0) for run, c in by_run.items()])


def test_select_chooses_on_one_part_and_reports_the_other() -> None:
    good_v1 = Counts(tp=9, fp=1, tn=9, fn=1)
    bad = Counts(tp=1, fp=9, tn=1, fn=9)
    evaluations = {
        "a": _evaluation("a", {"valve1/0": good_v1, "valve2/0": bad, "other/1": bad}),
        "b": _evaluation("b", {"valve1/0": bad, "valve2/0": good_v1, "other/1": good_v1}),
        "broken": Evaluation("broken", error="RuntimeError: boom"),
    }
    first, second = select(evaluations)
    assert (first.dev, first.config, first.dev_counts, first.confirm_counts) == (
        ("valve1",), "a", good_v1, bad + bad)
    assert (second.dev, second.config, second.confirm_counts) == (("valve2", "other"), "b", bad)
    assert (first.runner_up, second.runner_up) == ("b", "a") and first.runner_up_f1 == pytest.approx(0.1)
    tie = {"x": _evaluation("x", {"valve1/0": bad, "other/1": bad}),
           "y": _evaluation("y", {"valve1/0": bad, "other/1": good_v1})}
    assert [p.config for p in select(tie)] == ["x", "y"]          # a tie on valve1 keeps the earlier one
    assert select({"a": _evaluation("a", {"valve1/0": good_v1})}) == []     # nothing to confirm on


def test_report_shows_every_candidate_and_the_picks() -> None:
    skab_runs = [_synthetic("valve1/0", 450, slice(420, 440)), _synthetic("valve2/0", 450, slice(400, 450)),
                 _synthetic("other/1", 450, slice(430, 450))]
    evaluations = {
        "default": _evaluation("default", {"valve1/0": Counts(10, 2, 28, 10), "valve2/0": Counts(25, 0, 0, 25),
                                           "other/1": Counts(20, 1, 29, 0)}),
        "pot": Evaluation("pot", error="RuntimeError: boom"),
    }
    text = report(evaluations, skab_runs, select(evaluations), "cmd", 1.0, 0)
    assert "| Conv-AE | 0.78 | 13.55 | 28.02 |" in text
    assert "| default | - | 0.743 / 5.00 / 38.89 |" in text           # pooled: TP 55, FP 3, TN 57, FN 35
    assert "| pot | threshold.method=pot | FAILED: RuntimeError: boom |" in text
    assert "| valve1 | default | 0.625 / 6.67 / 50.00 |" in text
    assert "| valve2 + other | default |" in text
    assert "default: FAR 5.0 % on all runs, target_fpr 1 %; 38.7 % of all scored rows flagged." in text


@needs_data
@pytest.mark.slow
def test_a_real_sequence_fit_on_one_run(skab_runs: list[Run]) -> None:
    run = next(r for r in skab_runs if r.name == "valve2/3")
    overrides: dict[str, dict[str, Any]] = {"model": {"window": 16, "arch": "conv", "epochs": 3}}
    (result,) = evaluate(overrides, [run], name="seq").results
    counts = result.counts
    assert (result.n_fit, result.n_scored) == (400, 595)
    assert counts.tp + counts.fp + counts.tn + counts.fn == 595 and counts.tp + counts.fn == 395
    assert math.isfinite(result.threshold) and result.fit_s > 0


def test_drift_measures_the_normal_rows_against_the_fitted_ones() -> None:
    run = _synthetic("other/1", 600, slice(400, 450))
    run.frame.loc[450:, SENSORS[0]] += 3 * run.frame[SENSORS[0]][:400].std()      # the later normal rows shift
    run.frame.loc[400:449, SENSORS[1]] += 100.0                                   # the anomaly does not count
    shifts = drift(run)
    assert shifts[SENSORS[0]] == pytest.approx(3.0, abs=0.3)
    assert shifts[SENSORS[1]] < 0.5
