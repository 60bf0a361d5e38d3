"""Convert stored records to the pandas frames the training library works on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from detector.store.repository import PendingRecord
from training.schema import Schema

__all__ = ["records_frame", "to_json_value"]


def records_frame(records: Sequence[PendingRecord], schema: Schema) -> pd.DataFrame:
    """One row per record, one column per schema feature (missing values as None/NaN)."""
    names = schema.names
    rows = [[r.fields.get(n) for n in names] for r in records]
    frame = pd.DataFrame(rows, columns=names)
    for feature in schema.features:
        if feature.kind == "numeric":
            frame[feature.name] = pd.to_numeric(frame[feature.name], errors="coerce").astype("float64")
    return frame


def to_json_value(value: Any) -> Any:
    """A JSON-safe Python scalar from numpy/pandas scalars (NaN and inf become None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
