"""The feature schema: which input columns a model uses and what kind each one is."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

__all__ = ["Feature", "FeatureKind", "Schema"]

logger = logging.getLogger(__name__)

FeatureKind = Literal["numeric", "categorical", "boolean"]
_KINDS: tuple[str, ...] = get_args(FeatureKind)


@dataclass(frozen=True, slots=True)
class Feature:
    """One input field of a record, with its kind and whether it may be missing."""

    name: str
    kind: FeatureKind
    optional: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"feature name must be a non-empty string, got {self.name!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.optional, bool):
            raise ValueError(f"feature {self.name!r}: optional must be a bool, got {self.optional!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "optional": self.optional}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Feature:
        return cls(name=d["name"], kind=d["kind"], optional=bool(d.get("optional", False)))


@dataclass(frozen=True, slots=True)
class Schema:
    """An ordered tuple of features with unique names."""

    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("a schema needs at least one feature")
        seen: set[str] = set()
        for feature in self.features:
            if feature.name in seen:
                raise ValueError(f"duplicate feature name {feature.name!r} in schema")
            seen.add(feature.name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_dict(self) -> dict[str, Any]:
        return {"features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schema:
        return cls(features=tuple(Feature.from_dict(f) for f in d["features"]))

    @classmethod
    def infer(cls, frame: pd.DataFrame, exclude: Iterable[str] = ()) -> Schema:
        """Guess each column's kind from its dtype.

        bool dtype (or an object column holding only booleans and missing values) -> boolean,
        other numeric dtypes -> numeric, anything else -> categorical. A column with any missing
        value is optional.
        """
        skip = set(exclude)
        features: list[Feature] = []
        for column in frame.columns:
            if column in skip:
                continue
            if not isinstance(column, str):
                raise ValueError(f"column names must be strings to infer a schema, got {column!r}")
            series = frame[column]
            optional = bool(series.isna().any())
            features.append(Feature(column, _infer_kind(series), optional))
        return cls(features=tuple(features))


def _infer_kind(series: pd.Series[Any]) -> FeatureKind:
    if pd.api.types.is_bool_dtype(series.dtype):
        return "boolean"
    if pd.api.types.is_numeric_dtype(series.dtype):
        return "numeric"
    if series.dtype == object:
        present = series.dropna()
        if len(present) > 0 and present.map(type).isin([bool, np.bool_]).all():
            return "boolean"
    return "categorical"
