"""The diversity report: each deliberately poor window trips exactly its own check, a healthy one none."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from training.diversity import CHECKS, Check, DiversityLimits, DiversityReport, check_window
from training.schema import Feature, Schema

DAY_S = 86400.0
WEEK_S = 7 * DAY_S
SCHEMA = Schema((
    *(Feature(f"x{i}", "numeric") for i in range(5)),
    Feature("region", "categorical"),
    Feature("busy", "boolean"),
))
LOADINGS = np.random.default_rng(7).normal(size=(3, 5))
OFFSETS = np.array([50.0, 10.0, -20.0, 5.0, 100.0])


def healthy(n: int, seed: int, start: str = "2024-01-01") -> tuple[pd.DataFrame, pd.Series[Any]]:
    """n records every 5 minutes from `start`: 5 numeric features from 3 factors plus noise, 4 balanced
    regions, a boolean; the same distribution for every seed."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 3)) @ LOADINGS + 0.3 * rng.normal(size=(n, 5)) + OFFSETS
    frame = pd.DataFrame(values, columns=[f"x{i}" for i in range(5)])
    frame["region"] = np.array(["eu", "us", "asia", "africa"])[np.arange(n) % 4]
    frame["busy"] = rng.random(n) < 0.5
    timestamps = pd.Series(pd.date_range(start, periods=n, freq="5min", tz="UTC"))
    return frame, timestamps


WEEK = 7 * 288  # records in 7 days, one every 5 minutes


def history() -> pd.DataFrame:
    return healthy(4 * WEEK, seed=99, start="2023-12-01")[0]


def problems(report: DiversityReport) -> set[tuple[str, str, str | None]]:
    return {(c.check, c.status, c.feature) for c in report.problems}


def only_problem(report: DiversityReport) -> Check:
    (check,) = report.problems
    return check


def test_a_healthy_window_trips_nothing_and_lists_every_check() -> None:
    frame, ts = healthy(WEEK, seed=0)
    report = check_window(frame, SCHEMA, n_parameters=1000, timestamps=ts, keys=pd.Series(["h"] * WEEK),
                          expected_span_s=WEEK_S, history=history(), excluded=10)
    assert problems(report) == set(), [c.message for c in report.problems]
    assert report.status == "ok"
    assert {c.check for c in report.checks} == set(CHECKS)
    pairs = [(c.check, c.feature) for c in report.checks]
    assert len(pairs) == len(set(pairs))
    by_pair = {(c.check, c.feature): c for c in report.checks}
    assert (by_pair[("effective_dimensionality", None)].value or 0) >= 3
    assert by_pair[("weekday_coverage", None)].value == 1.0
    assert 0.7 < (by_pair[("range_shrinkage", "x0")].value or 0.0) < 1.3


def test_without_timestamps_or_history_the_skipped_checks_say_why() -> None:
    frame, _ = healthy(WEEK, seed=0)
    report = check_window(frame, SCHEMA)
    assert [c.check for c in report.checks if c.feature is None] == [
        c for c in CHECKS if c not in ("category_dominance",)
    ]
    skipped = {c.check: c for c in report.checks if c.message.startswith(f"{c.check}: skipped")}
    assert set(skipped) == {"missing_categories", "hour_coverage", "weekday_coverage", "largest_gap",
                            "range_shrinkage"}
    assert all(c.status == "ok" and c.value is None for c in skipped.values())
    assert "no timestamps" in skipped["hour_coverage"].message
    assert "no history" in skipped["range_shrinkage"].message


def test_a_constant_column_fails_constant_only() -> None:
    frame, ts = healthy(WEEK, seed=0)
    frame["x2"] = 20.0
    report = check_window(frame, SCHEMA, timestamps=ts, expected_span_s=WEEK_S, history=history())
    check = only_problem(report)
    assert (check.check, check.status, check.feature, check.value) == ("constant", "fail", "x2", 0.0)
    assert "constant: feature 'x2' is constant (value 20) in all 2016 rows" in check.message
    assert "stuck sensor" in check.message
    assert report.status == "fail"


def test_a_near_constant_column_warns() -> None:
    frame, _ = healthy(WEEK, seed=0)
    frame["x4"] = 1000.0 + 1e-3 * np.random.default_rng(1).normal(size=WEEK)
    check = only_problem(check_window(frame, SCHEMA))
    assert (check.check, check.status, check.feature) == ("constant", "warn", "x4")
    assert f"{check.value:.3g}" in check.message


def test_a_single_weekday_fails_weekday_coverage_but_its_hours_pass() -> None:
    frame, ts = healthy(288, seed=0)  # one full day
    report = check_window(frame, SCHEMA, timestamps=ts, expected_span_s=WEEK_S)
    check = only_problem(report)
    assert (check.check, check.status) == ("weekday_coverage", "fail")
    assert check.value == pytest.approx(1 / 7)
    assert "1 of 7 expected days of week present (Mon) (coverage 0.14)" in check.message
    assert next(c for c in report.checks if c.check == "hour_coverage").value == 1.0


def test_one_day_expected_to_span_one_day_passes() -> None:
    frame, ts = healthy(288, seed=0)
    assert check_window(frame, SCHEMA, timestamps=ts, expected_span_s=DAY_S).status == "ok"


def test_half_a_day_fails_hour_coverage() -> None:
    frame, ts = healthy(144, seed=0)
    check = only_problem(check_window(frame, SCHEMA, timestamps=ts, expected_span_s=DAY_S))
    assert (check.check, check.status, check.value) == ("hour_coverage", "fail", 0.5)
    assert "12 of 24 expected hours of day" in check.message


def test_a_40_percent_gap_warns_largest_gap() -> None:
    frame, ts = healthy(2 * WEEK, seed=0)
    hole = (ts >= pd.Timestamp("2024-01-04 06:00", tz="UTC")) & (ts < pd.Timestamp("2024-01-09 21:40", tz="UTC"))
    check = only_problem(check_window(frame[~hole], SCHEMA, timestamps=ts[~hole], expected_span_s=2 * WEEK_S))
    assert (check.check, check.status) == ("largest_gap", "warn")
    assert check.value == pytest.approx(0.4, abs=0.005)
    assert f"{100 * (check.value or 0):.1f} % of the 14 days span" in check.message
    assert "2024-01-04 05:55 to 2024-01-09 21:40 UTC" in check.message


def test_records_ingested_ten_times_trip_duplicates_not_distinct() -> None:
    frame, ts = healthy(WEEK, seed=0)
    repeated = np.repeat(np.arange(WEEK), 10)
    report = check_window(frame.iloc[repeated], SCHEMA, timestamps=ts.iloc[repeated],
                          keys=pd.Series(["h"] * len(repeated)), expected_span_s=WEEK_S, history=history())
    check = only_problem(report)
    assert (check.check, check.status, check.value) == ("duplicates", "fail", 0.9)
    assert "90.0 % of rows (18144 of 20160) repeat an earlier row's timestamp, key and feature values" in check.message
    assert next(c for c in report.checks if c.check == "distinct").value == pytest.approx(0.1)


def test_duplicates_count_records_not_values_when_timestamps_are_given() -> None:
    frame, ts = healthy(WEEK, seed=0)
    doubled = pd.concat([frame.iloc[: WEEK // 2]] * 2, ignore_index=True)  # values repeat, timestamps do not
    assert check_window(doubled, SCHEMA, timestamps=ts).status == "ok"
    check = only_problem(check_window(doubled, SCHEMA))
    assert (check.check, check.value) == ("duplicates", 0.5)
    keys = pd.Series(["a", "b"] * (WEEK // 2))
    same_ts = pd.Series([ts.iloc[0]] * WEEK)  # two hosts reporting at one instant are not duplicates
    assert check_window(frame, SCHEMA, keys=keys, timestamps=same_ts).checks[1].value == 0.0


def test_few_distinct_rows_fail_distinct() -> None:
    frame, _ = healthy(3000, seed=0)
    few = frame.iloc[np.arange(3000) % 20].reset_index(drop=True)
    report = check_window(few, SCHEMA, limits=DiversityLimits(max_duplicate_share=1.0))
    check = only_problem(report)
    assert (check.check, check.status) == ("distinct", "fail")
    assert "only 20 of 3000 rows (0.7 %)" in check.message


def test_one_category_at_99_percent_fails_category_dominance() -> None:
    frame, ts = healthy(WEEK, seed=0)
    regions = np.array(["eu"] * WEEK, dtype=object)
    regions[:21] = ["us", "asia", "africa"] * 7
    frame["region"] = regions
    report = check_window(frame, SCHEMA, timestamps=ts, expected_span_s=WEEK_S, history=history())
    check = only_problem(report)
    assert (check.check, check.status, check.feature) == ("category_dominance", "fail", "region")
    assert "feature 'region' is 'eu' in 99.0 % of rows" in check.message


def test_a_boolean_almost_always_true_fails_category_dominance() -> None:
    frame, _ = healthy(WEEK, seed=0)
    frame["busy"] = np.arange(WEEK) % 200 != 0
    check = only_problem(check_window(frame, SCHEMA))
    assert (check.check, check.feature) == ("category_dominance", "busy")
    assert "feature 'busy' is True in 99.5 % of rows" in check.message


def test_rank_one_numeric_data_fails_effective_dimensionality() -> None:
    frame, _ = healthy(WEEK, seed=0)
    rng = np.random.default_rng(3)
    t = rng.normal(size=WEEK)
    for i in range(5):
        frame[f"x{i}"] = OFFSETS[i] + (i + 1) * t + 1e-3 * rng.normal(size=WEEK)
    check = only_problem(check_window(frame, SCHEMA))
    assert (check.check, check.status, check.value, check.limit) == ("effective_dimensionality", "fail", 1, 2)
    assert "1 principal component(s) explain 95% of the variance of 5 numeric features" in check.message


def test_a_tenth_of_historys_spread_fails_range_shrinkage() -> None:
    frame, ts = healthy(WEEK, seed=0)
    frame["x1"] = OFFSETS[1] + 0.1 * (frame["x1"] - OFFSETS[1])
    report = check_window(frame, SCHEMA, timestamps=ts, expected_span_s=WEEK_S, history=history())
    check = only_problem(report)
    assert (check.check, check.status, check.feature) == ("range_shrinkage", "fail", "x1")
    assert check.value == pytest.approx(0.1, abs=0.01)
    assert f"(ratio {check.value:.2g})" in check.message
    assert "narrow regime" in check.message


def test_many_excluded_records_warn_contamination() -> None:
    frame, _ = healthy(WEEK, seed=0)
    check = only_problem(check_window(frame, SCHEMA, excluded=504))
    assert (check.check, check.status, check.value) == ("contamination", "warn", 0.2)
    assert "504 of 2520 records (20.0 %) were excluded" in check.message


def test_categories_of_history_absent_from_the_window_warn_missing_categories() -> None:
    frame, _ = healthy(WEEK, seed=0)
    past = history()
    past.loc[: len(past) // 10, "region"] = "antarctica"
    past.loc[0, "region"] = "atlantis"  # a singleton: below 0.1 % of history, not expected
    check = only_problem(check_window(frame, SCHEMA, history=past))
    assert (check.check, check.status, check.feature, check.value) == ("missing_categories", "warn", "region", 1)
    assert "1 value(s) seen in history are absent from the window ('antarctica')" in check.message


def test_too_few_rows_fail_and_a_window_small_for_its_columns_warns() -> None:
    frame, _ = healthy(20, seed=0)
    check = only_problem(check_window(frame, SCHEMA))
    assert (check.check, check.status, check.value, check.limit) == ("rows", "fail", 20, 32)
    assert "holds 20 rows, fewer than the 32 a model needs" in check.message
    # fewer rows than 2 a column: trained, on the neighbour memory alone, and said so
    narrow = pd.DataFrame(np.random.default_rng(0).normal(size=(60, 150)), columns=[f"c{i}" for i in range(150)])
    check = only_problem(check_window(narrow, Schema([Feature(f"c{i}", "numeric") for i in range(150)])))
    assert (check.check, check.status, check.value, check.limit) == ("rows", "warn", 60, 300)
    assert "neighbour memory alone" in check.message
    wide = pd.DataFrame(np.random.default_rng(0).normal(size=(120, 40)), columns=[f"c{i}" for i in range(40)])
    wide_schema = Schema([Feature(f"c{i}", "numeric") for i in range(40)])
    check = only_problem(check_window(wide, wide_schema, n_parameters=8000))
    assert (check.check, check.status, check.value, check.limit) == ("rows", "warn", 120, 400)
    assert "120 rows for 40 encoded columns (limit 400 rows, 10 a column)" in check.message
    # the parameter rule, off by default, still warns when a user sets it
    frame, _ = healthy(500, seed=0)
    check = only_problem(check_window(frame, SCHEMA, DiversityLimits(min_rows_per_parameter=1.0), n_parameters=1000))
    assert (check.check, check.status, check.value, check.limit) == ("rows", "warn", 500, 1000)
    assert "500 rows for a model of 1000 parameters" in check.message


def test_healthy_windows_pass_rows_with_the_default_network() -> None:
    """A new 4-feature detector at min_records = 500, and 6,000 varied rows of 6 numbers and a category,
    both warned "the model may memorise the window" with the parameter rule (issue 26)."""
    four = pd.DataFrame(np.random.default_rng(1).normal(size=(500, 4)), columns=list("abcd"))
    four_schema = Schema([Feature(c, "numeric") for c in "abcd"])
    assert check_window(four, four_schema, n_parameters=5324).status == "ok"
    frame, ts = healthy(6000, seed=2)
    report = check_window(frame, SCHEMA, n_parameters=6227, timestamps=ts, history=history())
    assert report.status == "ok", [c.message for c in report.problems]


def test_an_empty_window_fails_rows_and_runs_the_rest() -> None:
    frame, ts = healthy(0, seed=0)
    report = check_window(frame, SCHEMA, timestamps=ts, history=history(), n_parameters=10)
    assert problems(report) == {("rows", "fail", None)}


def test_report_round_trips_through_json() -> None:
    frame, ts = healthy(288, seed=0)
    frame["x0"] = 1.0
    report = check_window(frame, SCHEMA, timestamps=ts, expected_span_s=WEEK_S, history=history(), excluded=3)
    document = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert document["status"] == "fail"
    assert DiversityReport.from_dict(document) == report
    assert all(list(c) == ["check", "status", "value", "limit", "feature", "message"] for c in document["checks"])


def test_check_validates_and_serialises_non_finite_values_as_null() -> None:
    check = Check("rows", "ok", float("nan"), None, None, "rows: fine")
    assert check.to_dict() == {"check": "rows", "status": "ok", "value": None, "limit": None, "feature": None,
                               "message": "rows: fine"}
    with pytest.raises(ValueError, match="unknown check 'nope'"):
        Check("nope", "ok", None, None, None, "")
    with pytest.raises(ValueError, match="status"):
        Check.from_dict({"check": "rows", "status": "bad", "message": ""})
    assert DiversityReport(()).status == "ok"


def test_limits_round_trip() -> None:
    limits = DiversityLimits(min_components=3, max_gap_share=0.5)
    assert DiversityLimits.from_dict(json.loads(json.dumps(limits.to_dict()))) == limits


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_rows_per_parameter", -1.0),
        ("max_duplicate_share", 1.5),
        ("min_distinct_share", float("nan")),
        ("min_relative_spread", -1e-4),
        ("max_category_share", 0.0),
        ("min_components", 0),
        ("min_components", 2.5),
        ("min_hour_coverage", "0.9"),
        ("min_weekday_coverage", True),
        ("max_gap_share", 0.0),
        ("min_range_ratio", 2.0),
        ("max_contamination_share", -0.1),
    ],
)
def test_limits_reject_bad_values_naming_the_field(field: str, value: object) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=f"DiversityLimits.{field}"):
        DiversityLimits(**kwargs)


def test_limits_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="max_duplicates"):
        DiversityLimits.from_dict({"max_duplicates": 0.1})


def test_bad_arguments_are_refused() -> None:
    frame, ts = healthy(100, seed=0)
    with pytest.raises(KeyError, match="x0"):
        check_window(frame.drop(columns="x0"), SCHEMA)
    with pytest.raises(KeyError, match="history frame lacks"):
        check_window(frame, SCHEMA, history=frame.drop(columns="region"))
    with pytest.raises(ValueError, match="timestamps has 99 values"):
        check_window(frame, SCHEMA, timestamps=ts.iloc[:99])
    with pytest.raises(ValueError, match="expected_span_s"):
        check_window(frame, SCHEMA, expected_span_s=0.0)
    with pytest.raises(ValueError, match="excluded"):
        check_window(frame, SCHEMA, excluded=-1)


def test_optional_features_with_missing_values_are_handled() -> None:
    frame, ts = healthy(WEEK, seed=0)
    frame.loc[::10, "x0"] = np.nan
    frame["region"] = frame["region"].astype(object)
    frame.loc[::7, "region"] = None
    frame["busy"] = frame["busy"].astype(object)
    frame.loc[::5, "busy"] = None
    schema = Schema((
        Feature("x0", "numeric", optional=True),
        *SCHEMA.features[1:5],
        Feature("region", "categorical", optional=True),
        Feature("busy", "boolean", optional=True),
    ))
    naive = ts.dt.tz_localize(None)  # naive timestamps are taken as UTC
    report = check_window(frame, schema, timestamps=naive, expected_span_s=WEEK_S, history=history())
    assert problems(report) == set(), [c.message for c in report.problems]
