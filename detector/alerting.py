"""Alert hygiene: which records over the threshold become outliers (deviation floors, k-of-n confirmation)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pandas as pd

from detector.config import FloorConfig
from detector.records import ValidRecord
from detector.store.types import PendingRecord
from training.result import ScoreResult

__all__ = ["confirmed", "first_times", "within_floors"]

logger = logging.getLogger(__name__)


def within_floors(result: ScoreResult, frame: pd.DataFrame, rows: npt.NDArray[np.intp],
                  floors: Mapping[str, FloorConfig], top: int) -> npt.NDArray[np.bool_]:
    """Whether the `top` largest contributions of each of `rows` all lie within their features' floors.

    `frame` holds the records' actual values (one column per feature), `result.expected` what the model
    expected. A feature is within its floor when |actual - expected| <= absolute or <= relative * |expected|;
    a feature without a floor, or a missing value, never is, unless it contributes nothing (no cause).
    Returns one boolean per row of `rows`.
    """
    names = result.feature_names
    within = np.zeros((len(rows), len(names)), dtype=bool)
    expected_rows = result.expected_at(rows)
    for j, name in enumerate(names):
        floor = floors.get(name)
        if floor is None:
            continue
        actual = pd.to_numeric(frame[name].iloc[rows], errors="coerce").to_numpy(dtype=np.float64)
        expected = pd.to_numeric(expected_rows[name], errors="coerce").to_numpy(dtype=np.float64)
        deviation = np.abs(actual - expected)             # NaN when either is missing: never within
        if floor.absolute is not None:
            within[:, j] |= deviation <= floor.absolute
        if floor.relative is not None:
            within[:, j] |= deviation <= floor.relative * np.abs(expected)
    # the same ranking as the outlier's explanation (stable, largest contribution first); a feature that
    # contributes nothing (its value is the expected one) is no cause, whatever its floor
    contributions = result.contributions_at(rows)
    within |= contributions <= 0
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :top]
    flags: npt.NDArray[np.bool_] = np.asarray(np.take_along_axis(within, order, axis=1).all(axis=1))
    return flags


def first_times(records: Sequence[PendingRecord | ValidRecord]) -> dict[str | None, datetime]:
    """The earliest time of each key among `records`."""
    first: dict[str | None, datetime] = {}
    for record in records:
        if record.key not in first or record.ts < first[record.key]:
            first[record.key] = record.ts
    return first


def confirmed(records: Sequence[PendingRecord | ValidRecord], over: npt.NDArray[np.bool_],
              prior: Mapping[str | None, Sequence[bool]], k: int, n: int) -> npt.NDArray[np.bool_]:
    """Whether at least `k` of the last `n` records of each record's key, itself included, passed the threshold.

    `records` (in the order they were stored or claimed: by id) and `over` [len(records)] are a batch;
    `prior` holds, for a key, whether its records scored before its first one in the batch passed the
    threshold, oldest first. Records of a key are ordered by time, then by their place in the batch. One
    sort and one cumulative sum, whatever the number of keys.
    """
    prior_keys: list[str | None] = []
    prior_over: list[bool] = []
    for key, flags in prior.items():
        tail = list(flags)[-(n - 1):] if n > 1 else []
        prior_keys += [key] * len(tail)
        prior_over += tail
    m = len(prior_keys)
    codes, _ = pd.factorize(pd.Series(prior_keys + [r.key for r in records], dtype=object), use_na_sentinel=False)
    # earlier records go first in their key: the lowest possible time, in the order given
    times = np.concatenate([np.full(m, np.iinfo(np.int64).min, dtype=np.int64),
                            _nanoseconds([r.ts for r in records])])
    tiebreak = np.concatenate([np.arange(m, dtype=np.int64) - m, np.arange(len(records), dtype=np.int64)])
    order = np.lexsort((tiebreak, times, codes))
    flags = np.concatenate([np.asarray(prior_over, dtype=bool), over.astype(bool)])[order]
    keys = codes[order]
    position = np.arange(len(order))
    new_key = np.r_[True, keys[1:] != keys[:-1]] if len(order) else np.zeros(0, dtype=bool)
    key_start = np.maximum.accumulate(np.where(new_key, position, 0)) if len(order) else position
    low = np.maximum(position - n + 1, key_start)
    passed = np.r_[0, np.cumsum(flags)]
    enough = np.empty(len(order), dtype=bool)
    enough[order] = passed[position + 1] - passed[low] >= k
    result: npt.NDArray[np.bool_] = enough[m:]
    return result


def _nanoseconds(times: Sequence[datetime]) -> npt.NDArray[np.int64]:
    """Nanoseconds since the epoch, UTC."""
    index = pd.to_datetime(list(times), utc=True)
    stamps: npt.NDArray[np.int64] = index.to_numpy(dtype="datetime64[ns]").view(np.int64)
    return stamps
