"""Schema inference and serialisation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from training.schema import Feature, Schema


def test_infer_maps_dtypes_to_kinds_and_nan_to_optional() -> None:
    frame = pd.DataFrame({
        "cpu": [0.1, 0.2, np.nan],
        "count": [1, 2, 3],
        "up": [True, False, True],
        "flag": [True, None, False],
        "host": ["a", "b", None],
        "ts": ["x", "y", "z"],
    })
    schema = Schema.infer(frame, exclude=["ts"])
    assert schema.features == (
        Feature("cpu", "numeric", optional=True),
        Feature("count", "numeric"),
        Feature("up", "boolean"),
        Feature("flag", "boolean", optional=True),
        Feature("host", "categorical", optional=True),
    )
    assert schema.names == ["cpu", "count", "up", "flag", "host"]


def test_round_trip_through_json() -> None:
    schema = Schema((Feature("a", "numeric", True), Feature("b", "categorical"), Feature("c", "boolean")))
    assert Schema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ((), "at least one feature"),
        ((Feature("a", "numeric"), Feature("a", "boolean")), "duplicate feature name 'a'"),
    ],
)
def test_invalid_schemas_are_refused(features: tuple[Feature, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schema(features)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        Schema.from_dict({"features": [{"name": "a", "kind": "text"}]})
