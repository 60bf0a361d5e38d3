"""Convert numpy, pandas and container values into plain JSON-able Python values."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["to_jsonable"]

logger = logging.getLogger(__name__)


def to_jsonable(value: Any) -> Any:
    """None, bool, int, float (non-finite -> None), str, list and dict values only; others via str()."""
    if isinstance(value, np.generic):  # first: np.float64 subclasses float
        return to_jsonable(value.item())
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)
