"""Per-key normal: each record judged against its own series' level as well as against every record.

A detector watching many hosts learns one model, but host A idles at 80 % CPU and host B at 20 %: a quiet
host that turns busy looks like a busy host, and a global model cannot tell them apart. `KeyNormal` keeps,
for each key seen in the training window, its own centre of every number (the median of its rows) and its
usual value of every categorical or boolean feature (the value of at least USUAL_SHARE of its rows). A
record's encoding then gets one more column per feature: for a number, its distance from its key's centre
in the feature's global scale units; for a categorical or boolean, 1 when it differs from its key's usual
value. The network and the neighbour memory learn what these columns hold in normal records, so a host far
from its own normal scores high even at a level other hosts have as theirs; and since a record's own value
minus its key column gives its key's centre, the model also learns each key's relations (the CPU one host
needs for its load).

A key the window did not hold (a new host) gets 0 in every key column (at its own normal): it is judged
against every record until a retraining learns its centre; `known` says which rows had a known key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from training._columns import boolean_values, category_values, numeric_values, take_column
from training.schema import Schema
from training.sequence import KEY_COLUMN

__all__ = ["AUTO_KEYS", "KEY_CLIP", "MAX_KEYS", "USUAL_SHARE", "KeyNormal"]

logger = logging.getLogger(__name__)

AUTO_KEYS = 20           # per_key "auto": on from this many keys in the window
MAX_KEYS = 100_000       # keys remembered (those with the most rows); others are scored as new keys
USUAL_SHARE = 0.9        # a key's usual categorical / boolean value: held by at least this share of its rows
KEY_CLIP = 1e6           # key columns are clipped to this many scale units, as the encoded values are


def _keys(frame: pd.DataFrame) -> npt.NDArray[np.object_] | None:
    """The frame's record keys as strings, or None when it has no key column."""
    if KEY_COLUMN not in frame.columns:
        return None
    return frame[KEY_COLUMN].astype(str).to_numpy(dtype=object)


class KeyNormal:
    """Fitted per-key centres and usual values; `columns(frame)` gives the key columns [n, n_features].

    `numbers`: [n_keys, n_features] centres in encoded units (NaN for a non-numeric feature or a key
    without a value), `usual`: per feature, per key, the usual value (None: no usual value).
    """

    def __init__(self, schema: Schema, keys: list[str], numbers: npt.NDArray[np.float64],
                 usual: Mapping[str, list[str | None]]) -> None:
        if numbers.shape != (len(keys), len(schema.features)):
            raise ValueError(f"key centres have shape {numbers.shape}, expected [{len(keys)}, "
                             f"{len(schema.features)}]")
        if len(set(keys)) != len(keys):
            raise ValueError("per-key normal: keys must be unique")
        self.schema = schema
        self.keys = keys
        self.numbers = numbers
        self.usual = {f.name: list(usual.get(f.name, [None] * len(keys))) for f in schema.features
                      if f.kind != "numeric"}
        for name, values in self.usual.items():
            if len(values) != len(keys):
                raise ValueError(f"per-key normal: feature {name!r} has {len(values)} usual values for "
                                 f"{len(keys)} keys")
        self._lookup = pd.Index(keys, dtype=object)

    @property
    def n_keys(self) -> int:
        return len(self.keys)

    @classmethod
    def fit(cls, frame: pd.DataFrame, schema: Schema, encoded: npt.NDArray[np.float32],
            first_columns: Mapping[str, int], min_keys: int = 2) -> KeyNormal | None:
        """Centres and usual values of the keys of `frame`, whose `encoded` rows the preprocessor made
        (`first_columns`: each numeric feature's value column); None when the frame holds fewer than
        `min_keys` keys (at least 2)."""
        keys = _keys(frame)
        if keys is None:
            return None
        codes, uniques = pd.factorize(pd.Series(keys), sort=False)
        if len(uniques) < max(2, min_keys):
            return None
        counts = np.bincount(codes, minlength=len(uniques))
        order = np.argsort(-counts, kind="stable")[:MAX_KEYS]
        kept = np.full(len(uniques), -1, dtype=np.int64)
        kept[order] = np.arange(len(order))
        rows = kept[codes]
        numbers = np.full((len(order), len(schema.features)), np.nan)
        usual: dict[str, list[str | None]] = {}
        mask = rows >= 0
        for j, f in enumerate(schema.features):
            if f.kind == "numeric":
                values = encoded[:, first_columns[f.name]].astype(np.float64)
                if f.optional:
                    missing = numeric_values(take_column(frame, f.name), f.name, True)[1]
                    values = np.where(missing, np.nan, values)
                medians = pd.Series(values[mask]).groupby(rows[mask]).median()
                numbers[medians.index.to_numpy(), j] = medians.to_numpy()
            else:
                strings = _strings(frame, f.name, f.kind, f.optional)
                table = pd.DataFrame({"key": rows[mask], "value": strings[mask]})
                shares = table.groupby("key")["value"].value_counts(normalize=True, dropna=False)
                top = shares.groupby(level=0).head(1)
                found: list[str | None] = [None] * len(order)
                for key, value, share in zip(top.index.get_level_values(0), top.index.get_level_values(1),
                                             top.to_numpy(), strict=True):
                    if share >= USUAL_SHARE:
                        found[int(key)] = str(value)
                usual[f.name] = found
        return cls(schema, [str(uniques[i]) for i in order], numbers, usual)

    def columns(self, frame: pd.DataFrame, encoded: npt.NDArray[np.float32],
                first_columns: Mapping[str, int]) -> npt.NDArray[np.float32]:
        """The key columns [n, n_features] of `frame`'s rows (`encoded` by the preprocessor): a number's
        distance from its key's centre (scale units), 1 where a categorical or boolean value is not its key's
        usual one; 0 for rows of a key not remembered (or a frame without keys), and for a missing number."""
        n = len(frame)
        out = np.zeros((n, len(self.schema.features)), dtype=np.float32)
        keys = _keys(frame)
        if keys is None or n == 0:
            return out
        index = self._lookup.get_indexer(pd.Index(keys, dtype=object))
        known = index >= 0
        if not known.any():
            return out
        at = index[known]
        for j, f in enumerate(self.schema.features):
            if f.kind == "numeric":
                values = encoded[known, first_columns[f.name]].astype(np.float64)
                if f.optional:
                    values = np.where(numeric_values(take_column(frame, f.name), f.name, True)[1][known],
                                      np.nan, values)
                delta = values - self.numbers[at, j]
                out[known, j] = np.clip(np.nan_to_num(delta, nan=0.0), -KEY_CLIP, KEY_CLIP)
            else:
                strings = _strings(frame, f.name, f.kind, f.optional)[known]
                usual = np.asarray(self.usual[f.name], dtype=object)[at]
                out[known, j] = ((usual != None) & (strings != usual)).astype(np.float32)  # noqa: E711
        return out

    def known(self, frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
        """[n]: whether each row's key was in the training window (a key column of 0 means 'as usual')."""
        keys = _keys(frame)
        if keys is None:
            return np.zeros(len(frame), dtype=np.bool_)
        return np.asarray(self._lookup.get_indexer(pd.Index(keys, dtype=object)) >= 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "numbers": [[None if not np.isfinite(v) else float(v) for v in row] for row in self.numbers.tolist()],
            "usual": {name: list(values) for name, values in self.usual.items()},
        }

    @classmethod
    def from_dict(cls, schema: Schema, d: Mapping[str, Any]) -> KeyNormal:
        """Rebuild from `to_dict` output; KeyError / ValueError / TypeError on malformed input."""
        keys = [str(k) for k in d["keys"]]
        rows = d["numbers"]
        numbers = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)
        if len(keys) == 0:
            raise ValueError("per-key normal: no keys")
        usual = {str(name): [None if v is None else str(v) for v in values] for name, values in d["usual"].items()}
        return cls(schema, keys, numbers.reshape(len(keys), -1), usual)


def _strings(frame: pd.DataFrame, name: str, kind: str, optional: bool) -> npt.NDArray[np.object_]:
    """A categorical or boolean column's values as strings ("" where missing), comparable with `usual`."""
    column = take_column(frame, name)
    if kind == "categorical":
        strings, missing = category_values(column, name, optional)
        return np.where(missing, "", strings).astype(object)
    values, missing = boolean_values(column, name, optional)
    return np.where(missing, "", np.where(values >= 0.5, "true", "false")).astype(object)
