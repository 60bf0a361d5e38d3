"""Sequence mode: each record seen with the window of the records of its key just before it; and
cyclic time features (hour of day, day of week) for seasonal data."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["KEY_COLUMN", "TIME_FEATURES", "TS_COLUMN", "time_features", "windows"]

logger = logging.getLogger(__name__)

TS_COLUMN = "__ts__"     # a frame's record timestamps (datetime64 or anything pandas.to_datetime reads)
KEY_COLUMN = "__key__"   # a frame's record keys (series identity); absent = one series
TIME_FEATURES = ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos")


def _timestamps(frame: pd.DataFrame) -> pd.DatetimeIndex:
    if TS_COLUMN not in frame.columns:
        raise KeyError(f"this model needs record timestamps: the input has no {TS_COLUMN!r} column")
    ts = pd.to_datetime(frame[TS_COLUMN], utc=True, errors="coerce")
    if ts.isna().any():
        bad = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise ValueError(f"row {bad}: {TS_COLUMN!r} is missing or not a timestamp")
    return pd.DatetimeIndex(ts)


def time_features(frame: pd.DataFrame) -> npt.NDArray[np.float32]:
    """[n, 4]: sine and cosine of the hour of day and of the day of week of each row's timestamp (UTC)."""
    ts = _timestamps(frame)
    hour = (ts.hour.to_numpy() + ts.minute.to_numpy() / 60.0) / 24.0
    day = (ts.dayofweek.to_numpy() + hour) / 7.0
    angles = 2.0 * np.pi * np.column_stack([hour, hour, day, day])
    out = np.empty(angles.shape, dtype=np.float32)
    out[:, 0::2] = np.sin(angles[:, 0::2])
    out[:, 1::2] = np.cos(angles[:, 1::2])
    return out


def windows(x: npt.NDArray[np.float32], frame: pd.DataFrame, window: int) -> npt.NDArray[np.float32]:
    """[n, window * d]: each row of `x` [n, d] preceded by the window - 1 rows of the same key before it.

    Rows are ordered by timestamp within each key (stable, so equal timestamps keep frame order);
    the window is flattened oldest first and ends with the row itself. A row with fewer than
    window - 1 predecessors repeats its key's earliest row as padding.
    """
    n, d = x.shape
    if window == 1:
        return np.ascontiguousarray(x, dtype=np.float32)
    if n == 0:
        return np.zeros((0, window * d), dtype=np.float32)
    ts = _timestamps(frame).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    keys = frame[KEY_COLUMN].astype(str).to_numpy() if KEY_COLUMN in frame.columns else np.zeros(n, dtype=np.int8)
    key_codes = pd.factorize(keys)[0]
    order = np.lexsort((np.arange(n), ts, key_codes))          # by key, then time, then frame order
    sorted_keys = key_codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    pos = np.arange(n)
    offsets = np.arange(-(window - 1), 1)
    idx = np.maximum(pos[:, None] + offsets[None, :], group_start[:, None])   # [n, window] into sorted rows
    gathered = x[order][idx]                                                   # [n, window, d]
    out = np.empty((n, window * d), dtype=np.float32)
    out[order] = gathered.reshape(n, window * d)
    return out
