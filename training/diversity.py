"""The diversity report: checks that a training window shows enough of the normal the model must learn."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.schema import Schema
from training.settings import WIDE_ROWS_PER_COLUMN, min_rows_for, wide

__all__ = ["CHECKS", "Check", "DiversityLimits", "DiversityReport", "Status", "check_window"]

logger = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail"]
_STATUSES: tuple[str, ...] = get_args(Status)
_SEVERITY = {"ok": 0, "warn": 1, "fail": 2}

CHECKS = (
    "rows",
    "duplicates",
    "distinct",
    "constant",
    "category_dominance",
    "missing_categories",
    "effective_dimensionality",
    "hour_coverage",
    "weekday_coverage",
    "largest_gap",
    "range_shrinkage",
    "contamination",
)

_SVD_MAX_ROWS = 20_000
_EXPLAINED = 0.95
_HISTORY_MIN_SHARE = 0.001  # a history value rarer than this is not expected in the window
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _share(x: float) -> bool:
    return 0.0 <= x <= 1.0


# field -> (is it valid, what it must be); ranges match detector.config.DiversityConfig
_LIMIT_RULES: dict[str, tuple[Any, str]] = {
    "min_rows_per_column": (lambda x: x >= 0, ">= 0"),
    "min_rows_per_parameter": (lambda x: x >= 0, ">= 0"),
    "max_duplicate_share": (_share, "in [0, 1]"),
    "min_distinct_share": (_share, "in [0, 1]"),
    "min_relative_spread": (lambda x: x >= 0, ">= 0"),
    "max_category_share": (lambda x: 0 < x <= 1, "in (0, 1]"),
    "min_components": (lambda x: x >= 1, "an integer >= 1"),
    "min_hour_coverage": (_share, "in [0, 1]"),
    "min_weekday_coverage": (_share, "in [0, 1]"),
    "max_gap_share": (lambda x: 0 < x <= 1, "in (0, 1]"),
    "min_range_ratio": (_share, "in [0, 1]"),
    "max_contamination_share": (_share, "in [0, 1]"),
}


@dataclass(frozen=True, slots=True)
class DiversityLimits:
    """Where each check starts to warn or fail; see CHECKS and check_window."""

    min_rows_per_column: float = 10.0
    min_rows_per_parameter: float = 0.0
    max_duplicate_share: float = 0.2
    min_distinct_share: float = 0.01
    min_relative_spread: float = 1e-4
    max_category_share: float = 0.98
    min_components: int = 2
    min_hour_coverage: float = 0.9
    min_weekday_coverage: float = 0.9
    max_gap_share: float = 0.25
    min_range_ratio: float = 0.25
    max_contamination_share: float = 0.1

    def __post_init__(self) -> None:
        for name, (valid, wanted) in _LIMIT_RULES.items():
            value = getattr(self, name)
            integral = isinstance(value, int) and not isinstance(value, bool)
            number = integral or isinstance(value, float)
            if name == "min_components" and not integral:
                number = False
            if not number or math.isnan(value) or not valid(value):
                raise ValueError(f"DiversityLimits.{name} must be {wanted}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DiversityLimits:
        unknown = sorted(set(d) - set(_LIMIT_RULES))
        if unknown:
            raise ValueError(f"unknown DiversityLimits field(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True, slots=True)
class Check:
    """One check's verdict: the measured value, its limit, the feature concerned and what to do."""

    check: str
    status: Status
    value: float | None
    limit: float | None
    feature: str | None
    message: str

    def __post_init__(self) -> None:
        if self.check not in CHECKS:
            raise ValueError(f"unknown check {self.check!r}; expected one of {CHECKS}")
        if self.status not in _STATUSES:
            raise ValueError(f"check {self.check!r}: status must be one of {_STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "value": _finite(self.value),
            "limit": _finite(self.limit),
            "feature": self.feature,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Check:
        return cls(
            check=str(d["check"]),
            status=d["status"],
            value=_finite(d.get("value")),
            limit=_finite(d.get("limit")),
            feature=None if d.get("feature") is None else str(d["feature"]),
            message=str(d["message"]),
        )


@dataclass(frozen=True, slots=True)
class DiversityReport:
    """The checks of one training window, in CHECKS order, then schema order."""

    checks: tuple[Check, ...]

    @property
    def status(self) -> Status:
        """The worst status of the checks ("ok" when there are none)."""
        worst: Status = "ok"
        for check in self.checks:
            if _SEVERITY[check.status] > _SEVERITY[worst]:
                worst = check.status
        return worst

    @property
    def problems(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status != "ok")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DiversityReport:
        return cls(checks=tuple(Check.from_dict(c) for c in d["checks"]))


def _finite(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _num(x: float) -> str:
    return f"{x:.3g}"


def _pct(share: float) -> str:
    return f"{100 * share:.1f} %"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"


def _ok(check: str, message: str, value: float | None = None, limit: float | None = None,
        feature: str | None = None) -> Check:
    return Check(check, "ok", value, limit, feature, f"{check}: {message}")


def _skip(check: str, reason: str) -> Check:
    return _ok(check, f"skipped: {reason}")


@dataclass(frozen=True, slots=True)
class _Numeric:
    """Per-feature statistics of the window's numeric features (arrays of length n_features, NaN skipped)."""

    names: list[str]
    values: npt.NDArray[np.float64]  # [n_rows, n_features]
    count: npt.NDArray[np.int64]
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]

    @classmethod
    def of(cls, frame: pd.DataFrame, names: list[str]) -> _Numeric:
        values = frame[names].to_numpy(dtype=np.float64, na_value=np.nan)
        present = ~np.isnan(values)
        count = present.sum(axis=0)
        safe = np.maximum(count, 1)
        filled = np.where(present, values, 0.0)
        mean = filled.sum(axis=0) / safe
        std = np.sqrt((np.where(present, values - mean, 0.0) ** 2).sum(axis=0) / safe)
        low = np.where(present, values, np.inf).min(axis=0, initial=np.inf)
        high = np.where(present, values, -np.inf).max(axis=0, initial=-np.inf)
        return cls(names, values, count, low, high, mean, std)

    @property
    def varying(self) -> npt.NDArray[np.bool_]:
        """Features with at least two distinct values."""
        return (self.count > 0) & (self.high > self.low)


def check_window(
    frame: pd.DataFrame,
    schema: Schema,
    limits: DiversityLimits = DiversityLimits(),
    *,
    n_parameters: int | None = None,
    timestamps: pd.Series[Any] | None = None,
    keys: pd.Series[Any] | None = None,
    expected_span_s: float | None = None,
    history: pd.DataFrame | None = None,
    excluded: int = 0,
) -> DiversityReport:
    """Run every check in CHECKS on the training window `frame` (one column per schema feature).

    `n_parameters`: the model's parameter count (rows check). `timestamps` (one per row; naive ones
    are taken as UTC) and `keys` (the record's entity; only used with timestamps) enable the time
    checks and make duplicates mean records ingested twice. `expected_span_s`: the span the window
    should cover (default: the observed one). `history`: a longer reference period, same columns,
    for missing_categories and range_shrinkage. `excluded`: records left out as flagged outliers.
    Checks that cannot run are reported "ok" with value None and say why. KeyError for a missing
    column, ValueError for inconsistent arguments.
    """
    _validate(frame, schema, n_parameters, timestamps, keys, expected_span_s, history, excluded)
    kinds = {kind: [f.name for f in schema.features if f.kind == kind] for kind in ("numeric", "categorical")}
    discrete = [f.name for f in schema.features if f.kind != "numeric"]
    numeric = _Numeric.of(frame, kinds["numeric"])
    ts = None if timestamps is None else pd.to_datetime(timestamps, utc=True).reset_index(drop=True)
    checks = [
        _rows(frame, schema, limits, n_parameters),
        *_duplicates(frame, schema, limits, ts, keys),
        *_constant(numeric, limits),
        *_dominance(frame, discrete, limits),
        *_missing_categories(frame, kinds["categorical"], history),
        _dimensionality(numeric, limits),
        *_time_checks(ts, expected_span_s, limits),
        *_range_shrinkage(numeric, history, limits),
        _contamination(len(frame), excluded, limits),
    ]
    report = DiversityReport(tuple(checks))
    logger.debug("diversity report: %s, %d of %d checks not ok", report.status, len(report.problems), len(checks))
    return report


def _validate(frame: pd.DataFrame, schema: Schema, n_parameters: int | None, timestamps: pd.Series[Any] | None,
              keys: pd.Series[Any] | None, expected_span_s: float | None, history: pd.DataFrame | None,
              excluded: int) -> None:
    for what, table in (("window", frame), ("history", history)):
        missing = [] if table is None else [n for n in schema.names if n not in table.columns]
        if missing:
            raise KeyError(f"the {what} frame lacks schema feature column(s): {', '.join(missing)}")
    for what, series in (("timestamps", timestamps), ("keys", keys)):
        if series is not None and len(series) != len(frame):
            raise ValueError(f"{what} has {len(series)} values for a window of {len(frame)} rows")
    if n_parameters is not None and n_parameters < 0:
        raise ValueError(f"n_parameters must be >= 0, got {n_parameters!r}")
    if expected_span_s is not None and not (math.isfinite(expected_span_s) and expected_span_s > 0):
        raise ValueError(f"expected_span_s must be a positive number of seconds, got {expected_span_s!r}")
    if excluded < 0:
        raise ValueError(f"excluded must be >= 0, got {excluded!r}")


def _encoded_columns(frame: pd.DataFrame, schema: Schema) -> int:
    """A cheap estimate of the preprocessor's encoded columns (one-hot plus an unseen slot per categorical)."""
    n = 0
    for feature in schema.features:
        if feature.kind == "categorical":
            n += int(frame[feature.name].nunique(dropna=True)) + 1
        else:
            n += 1 + int(feature.optional)
    return n


def _rows(frame: pd.DataFrame, schema: Schema, limits: DiversityLimits, n_parameters: int | None) -> Check:
    """Fail below what training needs; warn when the window is small for the columns it must relate.

    The warning is judged by what the window can teach, `min_rows_per_column` rows per encoded column
    (a rule of thumb for estimating how columns vary together), not by the network's parameter count: the
    default network has about 5,000 parameters whatever the width, is trained with early stopping on
    held-out rows and noise, and was measured not to memorise windows of a few hundred rows (held-out
    loss within 1.2x of training loss at 500 rows x 4 columns and at 300 x 100). `min_rows_per_parameter`
    (0, off, by default) still warns for a user who wants the parameter rule.
    """
    n = len(frame)
    n_encoded = _encoded_columns(frame, schema)
    needed = min_rows_for(n_encoded)
    if n < needed:
        return Check("rows", "fail", n, needed, None,
                     f"rows: the window holds {n} rows, fewer than the {needed} a model needs: wait for more "
                     "records or widen training.window")
    if wide(n, n_encoded):
        limit = WIDE_ROWS_PER_COLUMN * n_encoded
        return Check("rows", "warn", n, limit, None,
                     f"rows: the window holds {n} rows for {n_encoded} encoded columns (fewer than "
                     f"{WIDE_ROWS_PER_COLUMN} a column): too few to learn how the columns relate; the model "
                     "scores by its neighbour memory alone (distance to the nearest normal records) until the "
                     "window holds more; widen training.window or raise training.min_records")
    per_column = limits.min_rows_per_column * n_encoded
    if n < per_column:
        return Check("rows", "warn", n, per_column, None,
                     f"rows: the window holds {n} rows for {n_encoded} encoded columns (limit {_num(per_column)} "
                     f"rows, {_num(limits.min_rows_per_column)} a column): too few to learn how the columns vary "
                     "together; widen training.window or raise training.min_records")
    if n_parameters is not None and n < limits.min_rows_per_parameter * n_parameters:
        wanted = limits.min_rows_per_parameter * n_parameters
        return Check("rows", "warn", n, wanted, None,
                     f"rows: the window holds {n} rows for a model of {n_parameters} parameters (limit "
                     f"{_num(wanted)} rows): the model may memorise the window; widen training.window or use "
                     "a smaller model (model.hidden, model.latent)")
    return _ok("rows", f"{n} rows for {n_encoded} encoded columns, at least {needed} needed", n, needed)


def _repeats(hashes: pd.Series[Any], parts: list[Any]) -> int:
    """How many rows exactly repeat an earlier row (a row: `parts` side by side; `hashes` one per row).

    Only rows that share a hash are compared exactly, so a hash collision cannot count as a repeat.
    """
    candidates = hashes.duplicated(keep=False).to_numpy()
    if not candidates.any():
        return 0
    table = pd.concat([part[candidates] for part in parts], axis=1, ignore_index=True)
    return int(table.duplicated().sum())


def _duplicates(frame: pd.DataFrame, schema: Schema, limits: DiversityLimits, ts: pd.Series[Any] | None,
                keys: pd.Series[Any] | None) -> list[Check]:
    n = len(frame)
    if n == 0:
        return [_skip("duplicates", "the window is empty"), _skip("distinct", "the window is empty")]
    values = frame[schema.names].reset_index(drop=True)
    hashes = pd.util.hash_pandas_object(values, index=False)
    n_distinct = n - _repeats(hashes, [values])
    n_repeated, what = n - n_distinct, "feature values"
    if ts is not None:
        parts = [ts] if keys is None else [ts, keys.reset_index(drop=True)]
        record_hashes = pd.util.hash_pandas_object(pd.concat([hashes, *parts], axis=1, ignore_index=True), index=False)
        n_repeated = _repeats(record_hashes, [values, *parts])
        what = "timestamp, key and feature values" if keys is not None else "timestamp and feature values"
    share = n_repeated / n
    if share > limits.max_duplicate_share:
        dup = Check("duplicates", "fail", share, limits.max_duplicate_share, None,
                    f"duplicates: {_pct(share)} of rows ({n_repeated} of {n}) repeat an earlier row's {what} "
                    f"(limit {_pct(limits.max_duplicate_share)}): records ingested twice? deduplicate the source")
    else:
        dup = _ok("duplicates", f"{_pct(share)} of rows repeat an earlier row's {what}", share,
                  limits.max_duplicate_share)
    distinct = n_distinct / n
    if distinct < limits.min_distinct_share:
        dis = Check("distinct", "fail", distinct, limits.min_distinct_share, None,
                    f"distinct: only {n_distinct} of {n} rows ({_pct(distinct)}) are distinct feature vectors "
                    f"(limit {_pct(limits.min_distinct_share)}): the window shows few states; check the source "
                    "or widen training.window")
    else:
        dis = _ok("distinct", f"{n_distinct} of {n} rows ({_pct(distinct)}) are distinct", distinct,
                  limits.min_distinct_share)
    return [dup, dis]


def _constant(numeric: _Numeric, limits: DiversityLimits) -> list[Check]:
    if not numeric.names or len(numeric.values) == 0:
        return [_skip("constant", "no numeric features" if not numeric.names else "the window is empty")]
    relative = numeric.std / (np.abs(numeric.mean) + 1e-12)
    checks: list[Check] = []
    for j, name in enumerate(numeric.names):
        count = int(numeric.count[j])
        if count == 0:
            checks.append(Check("constant", "fail", None, limits.min_relative_spread, name,
                                f"constant: feature {name!r} has no value in any row: remove it from features "
                                "or fix the source"))
        elif numeric.high[j] == numeric.low[j]:
            checks.append(Check("constant", "fail", 0.0, limits.min_relative_spread, name,
                                f"constant: feature {name!r} is constant (value {_num(numeric.low[j])}) in all "
                                f"{count} rows: a stuck sensor? remove it from features or fix the source"))
        elif relative[j] < limits.min_relative_spread:
            checks.append(Check("constant", "warn", float(relative[j]), limits.min_relative_spread, name,
                                f"constant: feature {name!r} barely varies (relative spread std/|mean| "
                                f"{_num(relative[j])}, limit {_num(limits.min_relative_spread)}, around "
                                f"{_num(numeric.mean[j])}): a stuck or quantised sensor? check the source"))
    if checks:
        return checks
    j = int(np.argmin(relative))
    return [_ok("constant", f"every numeric feature varies (smallest relative spread {_num(relative[j])}, "
                f"feature {numeric.names[j]!r})", float(relative[j]), limits.min_relative_spread)]


def _label(value: Any) -> str:
    """A category value as the operator wrote it: 'eu', True, 3 (numpy scalars unwrapped), or missing."""
    if isinstance(value, np.generic):
        value = value.item()
    return "missing" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(value)


def _dominance(frame: pd.DataFrame, names: list[str], limits: DiversityLimits) -> list[Check]:
    if not names:
        return [_skip("category_dominance", "no categorical or boolean features")]
    if len(frame) == 0:
        return [_skip("category_dominance", "the window is empty")]
    checks: list[Check] = []
    for name in names:
        counts = frame[name].value_counts(dropna=False)
        top, share = _label(counts.index[0]), float(counts.iloc[0]) / len(frame)
        if share > limits.max_category_share:
            checks.append(Check("category_dominance", "fail", share, limits.max_category_share, name,
                                f"category_dominance: feature {name!r} is {top} in {_pct(share)} of rows (limit "
                                f"{_pct(limits.max_category_share)}): the model learns little of its other "
                                "values; remove the feature or widen training.window"))
        else:
            checks.append(_ok("category_dominance", f"feature {name!r}: most common value {top} in {_pct(share)} "
                              "of rows", share, limits.max_category_share, name))
    return checks


def _no_history(history: pd.DataFrame | None) -> str:
    """Why checks against history cannot run, or "" when they can."""
    if history is None:
        return "no history given"
    return "the history is empty" if len(history) == 0 else ""


def _missing_categories(frame: pd.DataFrame, names: list[str], history: pd.DataFrame | None) -> list[Check]:
    reason = _no_history(history) or ("" if names else "no categorical features")
    if reason or history is None or len(frame) == 0:
        return [_skip("missing_categories", reason or "the window is empty")]
    checks: list[Check] = []
    for name in names:
        counts = history[name].value_counts(dropna=True)
        expected = counts.index[counts.to_numpy() >= _HISTORY_MIN_SHARE * len(history)]
        present = set(frame[name].dropna().unique())
        absent = [v for v in expected if v not in present]
        if absent:
            listed = ", ".join(_label(v) for v in absent[:5]) + (", ..." if len(absent) > 5 else "")
            checks.append(Check("missing_categories", "warn", len(absent), 0.0, name,
                                f"missing_categories: feature {name!r}: {len(absent)} value(s) seen in history are "
                                f"absent from the window ({listed}): the model will score them as unseen; widen "
                                "training.window to include them"))
        else:
            checks.append(_ok("missing_categories", f"feature {name!r}: all {len(expected)} common history values "
                              "are present", 0.0, 0.0, name))
    return checks


def _dimensionality(numeric: _Numeric, limits: DiversityLimits) -> Check:
    usable = np.flatnonzero(numeric.varying)
    if usable.size < 3:
        return _skip("effective_dimensionality", f"{usable.size} non-constant numeric feature(s), fewer than 3")
    values = numeric.values[:, usable]
    if len(values) > _SVD_MAX_ROWS:
        rows = np.random.default_rng(0).choice(len(values), _SVD_MAX_ROWS, replace=False)
        values = values[np.sort(rows)]
    z = np.nan_to_num((values - numeric.mean[usable]) / numeric.std[usable], nan=0.0)
    singular = np.linalg.svd(z, compute_uv=False)
    variance = singular**2
    explained = np.cumsum(variance) / max(float(variance.sum()), 1e-300)
    components = min(int(np.searchsorted(explained, _EXPLAINED - 1e-12)) + 1, usable.size)
    summary = (f"{components} principal component(s) explain {_EXPLAINED:.0%} of the variance of "
               f"{usable.size} numeric features")
    if components < limits.min_components:
        return Check("effective_dimensionality", "fail", components, limits.min_components, None,
                     f"effective_dimensionality: {summary} (limit {limits.min_components}): the features move "
                     "together, so the model learns a single signal; keep one of them or widen training.window")
    return _ok("effective_dimensionality", summary, components, limits.min_components)


def _time_checks(ts: pd.Series[Any] | None, expected_span_s: float | None, limits: DiversityLimits) -> list[Check]:
    names = ("hour_coverage", "weekday_coverage", "largest_gap")
    if ts is None:
        return [_skip(name, "no timestamps given") for name in names]
    index = pd.DatetimeIndex(ts.dropna()).as_unit("ns").sort_values()
    if len(index) < 2:
        return [_skip(name, f"{len(index)} timestamp(s), fewer than 2") for name in names]
    observed_s = (index[-1] - index[0]).total_seconds()
    span_s = observed_s if expected_span_s is None else float(expected_span_s)
    hours, days = np.unique(index.hour), np.unique(index.dayofweek)
    return [
        _coverage("hour_coverage", "hours of day", len(hours), min(24, _ceil(span_s / 3600)),
                  limits.min_hour_coverage, "", "whole days"),
        _coverage("weekday_coverage", "days of week", len(days), min(7, _ceil(span_s / 86400)),
                  limits.min_weekday_coverage, " (" + ", ".join(_WEEKDAYS[d] for d in days) + ")", "a week or more"),
        _largest_gap(index, span_s, limits),
    ]


def _ceil(x: float) -> int:
    return max(1, math.ceil(x - 1e-9))


def _coverage(check: str, unit: str, present: int, expected: int, limit: float, which: str, cover: str) -> Check:
    coverage = min(1.0, present / expected)
    summary = f"{present} of {expected} expected {unit} present{which} (coverage {coverage:.2f})"
    if coverage < limit:
        return Check(check, "fail", coverage, limit, None,
                     f"{check}: only {summary}, limit {limit:.2f}: the model has not seen the others and will flag "
                     f"them; widen training.window to cover {cover}")
    return _ok(check, summary, coverage, limit)


def _largest_gap(index: pd.DatetimeIndex, span_s: float, limits: DiversityLimits) -> Check:
    if span_s <= 0:
        return _skip("largest_gap", "all timestamps are equal")
    gaps = np.diff(index.to_numpy(dtype="datetime64[ns]").view(np.int64))
    i = int(np.argmax(gaps))
    gap_s = float(gaps[i]) / 1e9
    share = gap_s / span_s
    start, end = index[i].strftime("%Y-%m-%d %H:%M"), index[i + 1].strftime("%Y-%m-%d %H:%M")
    summary = f"the largest gap between records is {_duration(gap_s)} ({start} to {end} UTC), {_pct(share)} of the " \
              f"{_duration(span_s)} span"
    if share > limits.max_gap_share:
        return Check("largest_gap", "warn", share, limits.max_gap_share, None,
                     f"largest_gap: {summary} (limit {_pct(limits.max_gap_share)}): the model did not see that "
                     "period; check the source was up, widen training.window or wait until it is covered")
    return _ok("largest_gap", summary, share, limits.max_gap_share)


def _spread(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """p95 - p5 of each column of `values` [n, k], NaN skipped (NaN for an all-missing column)."""
    if not np.isnan(values).any():
        low, high = np.percentile(np.ascontiguousarray(values.T), [5, 95], axis=1)
        return np.asarray(high - low, dtype=np.float64)
    result = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        column = values[:, j][~np.isnan(values[:, j])]
        if column.size:
            low, high = np.percentile(column, [5, 95])
            result[j] = high - low
    return result


def _range_shrinkage(numeric: _Numeric, history: pd.DataFrame | None, limits: DiversityLimits) -> list[Check]:
    reason = _no_history(history) or ("" if numeric.names else "no numeric features")
    if reason or history is None or len(numeric.values) == 0:
        return [_skip("range_shrinkage", reason or "the window is empty")]
    window = _spread(numeric.values)
    past = _spread(history[numeric.names].to_numpy(dtype=np.float64, na_value=np.nan))
    checks: list[Check] = []
    for j, name in enumerate(numeric.names):
        if not numeric.varying[j]:
            checks.append(_ok("range_shrinkage", f"feature {name!r} skipped: constant in the window (see constant)",
                              feature=name))
        elif not past[j] > 0:
            checks.append(_ok("range_shrinkage", f"feature {name!r} skipped: no spread over history", feature=name))
        else:
            ratio = float(window[j] / past[j])
            spans = f"spans {_num(window[j])} in the window against {_num(past[j])} over history (ratio {ratio:.2g})"
            if ratio < limits.min_range_ratio:
                checks.append(Check("range_shrinkage", "fail", ratio, limits.min_range_ratio, name,
                                    f"range_shrinkage: feature {name!r} {spans}, limit {limits.min_range_ratio:.2g}: "
                                    "the window saw a narrow regime; widen training.window or wait"))
            else:
                checks.append(_ok("range_shrinkage", f"feature {name!r} {spans}", ratio, limits.min_range_ratio, name))
    return checks


def _contamination(n_rows: int, excluded: int, limits: DiversityLimits) -> Check:
    total = n_rows + excluded
    share = excluded / total if total else 0.0
    summary = f"{excluded} of {total} records ({_pct(share)}) were excluded as flagged outliers"
    if share > limits.max_contamination_share:
        return Check("contamination", "warn", share, limits.max_contamination_share, None,
                     f"contamination: {summary} (limit {_pct(limits.max_contamination_share)}): an incident in the "
                     "window, or a threshold too tight? review the outliers before trusting this training run")
    return _ok("contamination", summary, share, limits.max_contamination_share)
