"""Tests for records_frame: the column-wise build gives the frame the row-wise one did."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from detector.frames import records_frame
from detector.store.types import PendingRecord
from training.schema import Feature, Schema

T0 = datetime(2025, 3, 3, tzinfo=UTC)
NUMERIC = Schema(tuple(Feature(f"x{i}", "numeric") for i in range(3)))
MIXED = Schema((Feature("load", "numeric"), Feature("region", "categorical"),
                Feature("healthy", "boolean", optional=True), Feature("cpu", "numeric", optional=True)))


def row_by_row(records: list[PendingRecord], schema: Schema) -> pd.DataFrame:
    """The plain way: a frame from rows of values, numeric columns coerced afterwards."""
    names = schema.names
    frame = pd.DataFrame([[r.fields.get(n) for n in names] for r in records], columns=names)
    for feature in schema.features:
        if feature.kind == "numeric":
            frame[feature.name] = pd.to_numeric(frame[feature.name], errors="coerce").astype("float64")
    return frame


def pending(*fields: dict[str, Any]) -> list[PendingRecord]:
    return [PendingRecord(i, T0, None, f) for i, f in enumerate(fields)]


CASES = {
    "floats": (NUMERIC, pending({"x0": 1.5, "x1": -2.0, "x2": 3.25}, {"x0": 0.0, "x1": 1e300, "x2": -0.5})),
    "ints and extras": (NUMERIC, pending({"x0": 1, "x1": 2, "x2": 3, "note": "a"}, {"x0": 4.5, "x1": 5, "x2": 6})),
    "a missing name": (NUMERIC, pending({"x0": 1.0, "x1": 2.0, "x2": 3.0}, {"x0": 1.0, "x2": 3.0})),
    "None": (NUMERIC, pending({"x0": None, "x1": 2.0, "x2": 3.0}, {"x0": 1.0, "x1": 2.0, "x2": 3.0})),
    "text and bools": (NUMERIC, pending({"x0": "1.5", "x1": "high", "x2": True}, {"x0": 1.0, "x1": 2.0, "x2": 3.0})),
    "nan and inf": (NUMERIC, pending({"x0": math.nan, "x1": math.inf, "x2": 3.0})),
    "mixed kinds": (MIXED, pending({"load": 1.0, "region": "eu", "healthy": True, "cpu": 0.5},
                                   {"load": 2, "region": "us", "healthy": False, "cpu": None})),
    "mixed, a bool missing": (MIXED, pending({"load": 1.0, "region": "eu", "healthy": None, "cpu": 0.5},
                                             {"load": 2.0, "region": None, "healthy": True})),
    "one numeric feature": (Schema((Feature("x", "numeric"),)), pending({"x": 1.0}, {"x": 2})),
    "no records": (MIXED, []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_frame_as_row_by_row(case: str) -> None:
    schema, records = CASES[case]
    got = records_frame(records, schema)
    assert list(got.columns) == schema.names
    pd.testing.assert_frame_equal(got, row_by_row(records, schema), check_column_type=False, check_index_type=False)


def test_numeric_columns_are_float64() -> None:
    frame = records_frame(pending({"x0": 1, "x1": 2, "x2": 3}), NUMERIC)
    assert all(dtype == "float64" for dtype in frame.dtypes)


def test_the_validators_numeric_block_gives_the_frame_the_fields_give() -> None:
    from detector.records import RecordValidator

    schema = Schema(features=(Feature(name="b", kind="numeric"), Feature(name="a", kind="numeric")))
    validator = RecordValidator(schema, "ts", "host")
    raws = [{"ts": "2026-01-01T00:00:00Z", "host": "h", "a": 1, "b": 2.5, "extra": "x"},
            {"ts": "2026-01-01T00:01:00Z", "a": -3.25, "b": 10**15}]
    batch = validator.validate_many(raws)
    assert batch.numeric is not None and batch.numeric.shape == (2, 2)
    from_block = records_frame(batch.accepted, schema, numeric=batch.numeric)
    pd.testing.assert_frame_equal(from_block, records_frame(batch.accepted, schema))
    assert list(from_block.columns) == ["b", "a"]
    # anything the block path cannot vouch for: no block, the fields are read
    later = "2026-01-01T00:02:00Z"
    for odd in ({"ts": later, "a": None, "b": 1.0}, {"ts": "bad", "a": 1.0, "b": 1.0},
                {"ts": later, "a": True, "b": 1.0}, {"ts": later, "a": "1", "b": 1.0}):
        assert validator.validate_many([*raws, odd]).numeric is None, odd
