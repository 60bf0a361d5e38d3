"""Read one input column as a clean numpy array of a given kind, naming the feature on bad data."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["boolean_values", "category_values", "numeric_values", "take_column"]

logger = logging.getLogger(__name__)

_BOOL_WORDS: dict[Any, float] = {
    True: 1.0, False: 0.0,  # also matches 1, 0, 1.0, 0.0 (equal hashes)
    "true": 1.0, "false": 0.0, "True": 1.0, "False": 0.0, "TRUE": 1.0, "FALSE": 0.0,
    "1": 1.0, "0": 0.0, "yes": 1.0, "no": 0.0,
}


def take_column(frame: pd.DataFrame, name: str) -> pd.Series[Any]:
    """The column `name` of `frame`; KeyError naming it when the frame lacks it."""
    if name not in frame.columns:
        raise KeyError(f"input has no column for feature {name!r}")
    column = frame[name]
    if isinstance(column, pd.DataFrame):
        raise ValueError(f"input has more than one column named {name!r}")
    return column


def _check_missing(name: str, missing: npt.NDArray[np.bool_], optional: bool) -> None:
    if not optional and missing.any():
        raise ValueError(
            f"feature {name!r} is required but {int(missing.sum())} of {len(missing)} values are "
            "missing or not finite; declare it optional or drop those rows"
        )


def numeric_values(
    series: pd.Series[Any], name: str, optional: bool
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Values as float64 (NaN where missing) and the missing mask; inf counts as missing."""
    try:
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"feature {name!r} is numeric but holds a non-numeric value: {exc}") from None
    missing = ~np.isfinite(values)
    _check_missing(name, missing, optional)
    return np.where(missing, np.nan, values), missing


def boolean_values(
    series: pd.Series[Any], name: str, optional: bool
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Values as 0.0 / 1.0 (NaN where missing) and the missing mask."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
        bad = ~missing & (values != 0.0) & (values != 1.0)
    else:
        mapped = series.map(_BOOL_WORDS)
        values = mapped.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = series.isna().to_numpy(dtype=np.bool_)
        bad = ~missing & np.isnan(values)
    if bad.any():
        example = series.iloc[int(np.flatnonzero(bad)[0])]
        raise ValueError(f"feature {name!r} is boolean but holds {example!r}")
    _check_missing(name, missing, optional)
    return values, missing


def category_values(
    series: pd.Series[Any], name: str, optional: bool
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.bool_]]:
    """Values as strings (integral floats written as integers, so 3.0 and 3 agree) and the missing mask.

    Each distinct value is converted once (pd.factorize), so the cost per row is a hash lookup.
    """
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    missing = codes < 0
    _check_missing(name, missing, optional)
    labels = [_category_label(value) for value in uniques] + [""]
    return np.asarray(labels, dtype=object)[codes], missing


def _category_label(value: Any) -> str:
    if isinstance(value, float | np.floating) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)
