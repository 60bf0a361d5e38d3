"""Convert stored records to the pandas frames the training library works on."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from detector.config import DetectorConfig
from detector.records import ValidRecord
from detector.store.types import PendingRecord
from training.schema import Schema
from training.sequence import KEY_COLUMN, TS_COLUMN

__all__ = ["needs_context", "records_frame", "to_json_value"]

_PLAIN_NUMBERS = frozenset({float, int, type(None)})


def needs_context(det: DetectorConfig) -> bool:
    """Whether a detector's model reads each record's time and key (`records_frame`'s `context`): sequence
    models, time features and per-key normal."""
    return det.model.window > 1 or det.model.time_features or det.model.per_key != "off"


def records_frame(records: Sequence[PendingRecord | ValidRecord], schema: Schema, context: bool = False,
                  numeric: npt.NDArray[np.float64] | None = None) -> pd.DataFrame:
    """One row per record, one column per schema feature (missing values as None/NaN).

    The numeric features of every record are read in one pass into a float64 block; when a record lacks
    one or holds something else than a number, those columns are built one by one instead. With
    `context` the frame also holds each record's timestamp and key (the training library's TS_COLUMN
    and KEY_COLUMN), which sequence models and time features read. `numeric` [records, features], the
    validator's block of an all-numeric batch, stands in for reading the fields.
    """
    names = schema.names
    if (numeric is not None and numeric.shape == (len(records), len(names))
            and all(f.kind == "numeric" for f in schema.features)):
        frame = pd.DataFrame(numeric, columns=names)      # the validator's block: the same values
    else:
        frame = _features_frame(records, schema)
    if context:
        # a time beyond pandas' range (year 2262 on) is NaT: a model that reads times names the row; one that
        # reads only keys (per-key normal) is not stopped by it
        frame[TS_COLUMN] = pd.to_datetime([r.ts for r in records], utc=True, errors="coerce")
        frame[KEY_COLUMN] = ["" if r.key is None else r.key for r in records]
    return frame


def _features_frame(records: Sequence[PendingRecord | ValidRecord], schema: Schema) -> pd.DataFrame:
    fields = [r.fields for r in records]
    numeric = [f.name for f in schema.features if f.kind == "numeric"]
    block = _numeric_block(fields, numeric)
    if block is not None and len(numeric) == len(schema.features):
        return pd.DataFrame(block, columns=numeric)
    position = {name: j for j, name in enumerate(numeric)}
    columns: dict[str, Any] = {}
    for feature in schema.features:
        name = feature.name
        if feature.kind != "numeric":
            columns[name] = pd.Series([f.get(name) for f in fields], dtype=None if fields else object)
        elif block is not None:
            columns[name] = block[:, position[name]]
        else:
            columns[name] = _numeric_column([f.get(name) for f in fields])
    return pd.DataFrame(columns, columns=schema.names)


def _numeric_block(fields: list[dict[str, Any]], names: list[str]) -> npt.NDArray[np.float64] | None:
    """[n, len(names)] float64 when every record holds a number (int or float) for every name, else None."""
    if not names or not fields:
        return None
    getter = itemgetter(*names)
    values = map(getter, fields) if len(names) > 1 else ((v,) for v in map(getter, fields))
    try:
        flat = np.fromiter(chain.from_iterable(values), dtype=np.float64, count=len(fields) * len(names))
    except (KeyError, TypeError, ValueError, OverflowError):   # a missing name, None, text, a huge integer
        return None
    return flat.reshape(len(fields), len(names))


def _numeric_column(values: list[Any]) -> npt.NDArray[np.float64]:
    """float64 values, NaN where missing or not a number."""
    if set(map(type, values)) <= _PLAIN_NUMBERS:
        try:
            return np.array(values, dtype=np.float64)
        except OverflowError:   # an integer beyond float64
            pass
    coerced = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype("float64")
    return np.asarray(coerced, dtype=np.float64)


def to_json_value(value: Any) -> Any:
    """A JSON-safe Python scalar from numpy/pandas scalars (NaN and inf become None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
