"""Turn a frame of records into a float32 matrix for the autoencoder, and back into expected values."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd

from training._columns import boolean_values, category_values, numeric_values, take_column
from training.choices import PerKey, Scaling
from training.keys import AUTO_KEYS, KeyNormal
from training.schema import Feature, Schema

__all__ = ["MISSING", "OTHER", "RARE_SHARE", "UNSEEN", "Preprocessor", "numeric_block"]

logger = logging.getLogger(__name__)

OTHER = "__other__"
UNSEEN = "__unseen__"
MISSING = "__missing__"
RARE_SHARE = 0.001        # a categorical value seen in fewer than this share of the fitted rows is "rare"
KEY_SUFFIX = "@key"       # a feature's per-key column: its distance from (or difference to) its key's normal
# Encoded numeric values are clipped to this many scale units from the centre: a finite value beyond
# float32's range (validation accepts 1e39) would otherwise become inf, making training diverge and a
# score's explanation unreadable. A record this far out still scores far above any threshold.
NUMERIC_CLIP = 1e6
# The smallest scale a numeric feature gets (the smallest normal float64): its reciprocal is finite.
_MIN_SCALE = float(np.finfo(np.float64).tiny)

# transform_flagged encodes this many values at a time (rows x features), a block that stays in the CPU cache
_CHUNK_ELEMENTS = 65_536


def numeric_block(frame: pd.DataFrame, names: list[str], copy: bool = True) -> npt.NDArray[np.float64] | None:
    """Columns `names` of `frame` as one float64 array [n, len(names)] when each is a plain numpy
    numeric column (NaN stays NaN); None when one is missing, duplicated or of another type.

    With `copy` (the default) the array is always a fresh copy; without, it may be a view of the
    frame's data, which the caller must then not modify.
    """
    columns = frame.columns
    if not names or not columns.is_unique:
        return None
    if list(columns) == names:          # the frame is exactly these columns, in this order
        part = frame
    elif int(columns.isin(names).sum()) != len(names):
        return None
    else:
        part = frame[names]
    if not all(isinstance(t, np.dtype) and t.kind in "fiu" for t in part.dtypes):
        return None
    return part.to_numpy(dtype=np.float64, copy=copy)


@dataclass(frozen=True, slots=True)
class _Numeric:
    """encoded = (x - center) * (1 / scale); a missing value becomes `fill` (the median) before scaling.

    A multiplication by the reciprocal (one float64 rounding more than a division) is several times cheaper
    than a division; `scale` is at least _MIN_SCALE, whose reciprocal is finite.
    """

    center: float
    scale: float
    fill: float


@dataclass(frozen=True, slots=True)
class _Categorical:
    """`categories` get their own column, `other` (seen but rarer) share the `__other__` column. `rare`: the
    seen values held by fewer than RARE_SHARE of the fitted rows (empty for state saved before it was kept)."""

    categories: tuple[str, ...]
    other: tuple[str, ...]
    rare: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Boolean:
    """Encoded as 0 / 1; a missing value is 0.5."""


_State = _Numeric | _Categorical | _Boolean


def _feature_columns(feature: Feature, state: _State) -> list[str]:
    name = feature.name
    if isinstance(state, _Categorical):
        labels = [*state.categories, *([OTHER] if state.other else []), UNSEEN]
        labels += [MISSING] if feature.optional else []
        return [f"{name}={label}" for label in labels]
    return [name, *([f"{name}__missing"] if feature.optional else [])]


def _fit_numeric(values: npt.NDArray[np.float64], unit_range: bool, scaling: Scaling = "robust") -> _Numeric:
    present = values[np.isfinite(values)]
    if present.size == 0:
        return _Numeric(center=0.0, scale=1.0, fill=0.0)
    median = float(np.median(present))
    if scaling == "standard" and not unit_range:
        with np.errstate(over="ignore", invalid="ignore"):
            mean, std = float(np.mean(present)), float(np.std(present))
        if not np.isfinite(mean) or not np.isfinite(std):   # values near float64's limits
            mean, std = median, float("nan")
        return _Numeric(center=mean, scale=std if std >= _MIN_SCALE else 1.0, fill=median)
    if unit_range:
        low, high = np.quantile(present, [0.01, 0.99])
        width = float(high - low)
        return _Numeric(center=float(low), scale=width if width >= _MIN_SCALE else 1.0, fill=median)
    q25, q75 = np.quantile(present, [0.25, 0.75])
    scale = float(q75 - q25) / 1.349
    if not scale >= _MIN_SCALE:
        scale = float(np.std(present))
    if not scale >= _MIN_SCALE:
        scale = 1.0
    return _Numeric(center=median, scale=scale, fill=median)


def _fit_categorical(
    strings: npt.NDArray[np.object_], missing: npt.NDArray[np.bool_], top: int
) -> _Categorical:
    counts = pd.Series(strings[~missing]).value_counts(sort=False)
    ranked = sorted(counts.items(), key=lambda item: (-int(item[1]), str(item[0])))
    names = [str(value) for value, _ in ranked]
    rare = tuple(sorted(str(value) for value, count in ranked if int(count) < RARE_SHARE * len(strings)))
    return _Categorical(categories=tuple(names[:top]), other=tuple(names[top:]), rare=rare)


class Preprocessor:
    """Fitted encoding of a schema's features: robust-scaled numbers, one-hot categories, 0/1 booleans.

    Fit it with `Preprocessor.fit`; the constructor takes already fitted state.
    """

    def __init__(
        self, schema: Schema, states: Mapping[str, _State], *, max_categories: int, unit_range: bool,
        keys: KeyNormal | None = None,
    ) -> None:
        self.schema = schema
        self.keys = keys
        self.max_categories = max_categories
        self.unit_range = unit_range
        self._states = {f.name: states[f.name] for f in schema.features}
        self._lookups: dict[str, pd.Index[Any]] = {}
        for name, state in self._states.items():
            if isinstance(state, _Categorical):
                lookup = pd.Index([*state.categories, *state.other], dtype=object)
                if not lookup.is_unique:
                    raise ValueError(f"feature {name!r}: categories must be unique")
                self._lookups[name] = lookup
        self.columns: list[str] = []
        self.feature_slices: dict[str, slice] = {}
        for feature in schema.features:
            start = len(self.columns)
            self.columns += _feature_columns(feature, self._states[feature.name])
            self.feature_slices[feature.name] = slice(start, len(self.columns))
        # per-key normal (training.keys): one more column per feature, after every feature's own columns
        self.key_start = len(self.columns)
        if keys is not None:
            self.columns += [f"{name}{KEY_SUFFIX}" for name in schema.names]
        # each column's feature (schema position)
        owner = np.empty(len(self.columns), dtype=np.intp)
        for j, name in enumerate(schema.names):
            owner[self.feature_slices[name]] = j
        owner[self.key_start:] = np.arange(len(self.columns) - self.key_start)
        self.column_owner = owner
        self._first_columns = {name: self.feature_slices[name].start for name in schema.names}
        # Required numeric features are encoded as one block (one column each): their names, encoded
        # column positions and scaling as arrays.
        plain = [f.name for f in schema.features if isinstance(self._states[f.name], _Numeric) and not f.optional]
        self._plain_names = plain
        self._plain_columns = np.array([self.feature_slices[n].start for n in plain], dtype=np.intp)
        self._categorical = [(j, f) for j, f in enumerate(schema.features)
                             if isinstance(self._states[f.name], _Categorical)]
        numeric_states = [self._states[n] for n in plain]
        self._plain_center = np.array([st.center for st in numeric_states if isinstance(st, _Numeric)])
        self._plain_scale = np.array([st.scale for st in numeric_states if isinstance(st, _Numeric)])
        self._plain_inverse = 1.0 / self._plain_scale

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, schema: Schema, max_categories: int = 50, unit_range: bool = False,
        scaling: Scaling = "robust", per_key: PerKey = "off",
    ) -> Preprocessor:
        """Learn centres, spreads and category lists from `frame` (extra columns are ignored).

        With `per_key` "on" and a frame whose KEY_COLUMN holds at least 2 keys ("auto": AUTO_KEYS), each key's
        own normal too (`training.keys.KeyNormal`): the encoding then has one more column per feature. Not with
        `unit_range`.

        Numeric scaling: "robust" (median and interquartile range, falling back to the standard
        deviation), "standard" (mean and standard deviation); `unit_range` (the 1st to 99th
        percentile mapped to 0..1, for a BCE loss) overrides both.
        """
        if max_categories < 1:
            raise ValueError(f"max_categories must be at least 1, got {max_categories}")
        if scaling not in get_args(Scaling):
            raise ValueError(f"scaling must be one of {get_args(Scaling)}, got {scaling!r}")
        states: dict[str, _State] = {}
        for f in schema.features:
            column = take_column(frame, f.name)
            if f.kind == "numeric":
                states[f.name] = _fit_numeric(numeric_values(column, f.name, f.optional)[0], unit_range, scaling)
            elif f.kind == "categorical":
                strings, missing = category_values(column, f.name, f.optional)
                states[f.name] = _fit_categorical(strings, missing, max_categories)
            else:
                boolean_values(column, f.name, f.optional)  # validates the values
                states[f.name] = _Boolean()
        plain = cls(schema, states, max_categories=max_categories, unit_range=unit_range)
        if per_key == "off" or unit_range:
            return plain
        keys = KeyNormal.fit(frame, schema, plain.transform(frame), plain._first_columns,
                             AUTO_KEYS if per_key == "auto" else 2)
        if keys is None:
            return plain
        return cls(schema, states, max_categories=max_categories, unit_range=unit_range, keys=keys)

    def transform(self, frame: pd.DataFrame) -> npt.NDArray[np.float32]:
        """Encode `frame` into shape [n, n_columns]. KeyError for a missing feature column."""
        done = set()
        block = self._plain_block(frame)
        if block is not None:
            with np.errstate(over="ignore"):
                block -= self._plain_center         # the block is a fresh copy: scaled in place
                block *= self._plain_inverse
            np.clip(block, -NUMERIC_CLIP, NUMERIC_CLIP, out=block)
            if len(self._plain_names) == self.n_columns:     # numeric only: the block is the output
                return block.astype(np.float32)
        out = np.zeros((len(frame), self.n_columns), dtype=np.float32)
        if block is not None:
            out[:, self._plain_columns] = block
            done = set(self._plain_names)
        for f in self.schema.features:
            if f.name not in done:
                out[:, self.feature_slices[f.name]] = self._encode(f, take_column(frame, f.name))
        if self.keys is not None:
            out[:, self.key_start:] = self.keys.columns(frame, out, self._first_columns)
        return out

    def _plain_block(self, frame: pd.DataFrame) -> npt.NDArray[np.float64] | None:
        """The required numeric features of `frame` as one float64 block [n, k], when every one of them
        is a numeric column with finite values; None otherwise (the column-by-column path then reads
        them, and names the feature at fault)."""
        if len(self._plain_names) < 2:
            return None
        block = numeric_block(frame, self._plain_names)
        if block is None or not np.isfinite(block).all():
            return None
        return block

    @property
    def all_plain_numeric(self) -> bool:
        """Whether every feature is a required numeric one (one encoded column each, in schema order)."""
        return len(self._plain_names) == self.n_columns

    def transform_flagged(
        self, frame: pd.DataFrame, below: npt.NDArray[np.float64], above: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]] | None:
        """`transform(frame)` and, from the same read of the frame, where its values lie below `below` or
        above `above` ([n_features] each, in schema order; use -inf / inf to never flag a feature).

        Only for a preprocessor whose features are all required numeric ones, and a frame whose columns
        for them are plain numeric with finite values: None otherwise (use `transform` then, which also
        names a feature at fault). Rows are encoded in chunks that stay in the CPU cache; the encoded
        values are exactly those of `transform`.
        """
        if not self.all_plain_numeric:
            return None
        raw = numeric_block(frame, self._plain_names, copy=False)    # read only
        if raw is None:
            return None
        n, k = raw.shape
        out = np.empty((n, k), dtype=np.float32)
        flags = np.empty((n, k), dtype=np.bool_)
        if n == 0 or k == 0:
            return out, flags
        # Each chunk of rows is worked on as one flat run of values against the per-feature constants
        # tiled to the chunk's length: numpy then runs one long vectorised loop per operation instead of
        # one short loop per row (with the reciprocal scale, at 256 features: 4.1 ms -> 2.5-3 ms for 5,000 rows).
        step = min(n, max(1, _CHUNK_ELEMENTS // k))
        center, inverse = np.tile(self._plain_center, step), np.tile(self._plain_inverse, step)
        low_edge, high_edge = np.tile(below, step), np.tile(above, step)
        scratch = np.empty(step * k, dtype=np.float64)
        high = np.empty(step * k, dtype=np.bool_)
        flat_raw = np.ascontiguousarray(raw).reshape(-1)
        flat_out, flat_flags = out.reshape(-1), flags.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, n * k, step * k):
                values = flat_raw[start : start + step * k]
                m = len(values)
                scaled, over = scratch[:m], high[:m]
                np.subtract(values, center[:m], out=scaled)
                np.multiply(scaled, inverse[:m], out=scaled)
                # a non-finite input stays non-finite here (as does a finite one beyond float64 when
                # scaled, which the column-by-column path encodes the same way); the sum of the chunk
                # is then not finite either (nor, now and then, that of huge finite values: the
                # column-by-column path is then taken for nothing, with the same result)
                if not np.isfinite(np.add.reduce(scaled)):
                    return None
                encoded = flat_out[start : start + m]
                np.copyto(encoded, scaled, casting="same_kind")
                # clipped as float32: the same values, as both edges are float32 numbers
                np.clip(encoded, -NUMERIC_CLIP, NUMERIC_CLIP, out=encoded)
                low = flat_flags[start : start + m]
                np.less(values, low_edge[:m], out=low)
                np.greater(values, high_edge[:m], out=over)
                np.logical_or(low, over, out=low)
        return out, flags

    def _encode(self, f: Feature, column: pd.Series[Any]) -> npt.NDArray[np.float64]:
        state = self._states[f.name]
        if isinstance(state, _Categorical):
            strings, missing = category_values(column, f.name, f.optional)
            return self._one_hot(f, state, strings, missing)
        if isinstance(state, _Numeric):
            values, missing = numeric_values(column, f.name, f.optional)
            with np.errstate(over="ignore"):     # beyond float64 (1e308 - -1e308) is inf, clipped below
                encoded = (np.where(missing, state.fill, values) - state.center) * (1.0 / state.scale)
            encoded = np.clip(encoded, -NUMERIC_CLIP, NUMERIC_CLIP)
        else:
            values, missing = boolean_values(column, f.name, f.optional)
            encoded = np.where(missing, 0.5, values)
        if f.optional:
            return np.column_stack([encoded, missing.astype(np.float64)])
        return encoded[:, np.newaxis]

    def _one_hot(
        self,
        f: Feature,
        state: _Categorical,
        strings: npt.NDArray[np.object_],
        missing: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.float64]:
        n_named = len(state.categories)
        unseen_col = n_named + (1 if state.other else 0)
        codes = self._lookups[f.name].get_indexer(pd.Index(strings, dtype=object))
        cols = np.where(codes < 0, unseen_col, np.minimum(codes, n_named))
        if f.optional:
            cols = np.where(missing, unseen_col + 1, cols)
        block = np.zeros((len(strings), len(_feature_columns(f, state))), dtype=np.float64)
        block[np.arange(len(strings)), cols] = 1.0
        return block

    def category_masks(self, frame: pd.DataFrame) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Two [n, n_features] masks from one read of each categorical column: `unseen_mask` and `rare_mask`."""
        unseen = np.zeros((len(frame), len(self.schema.features)), dtype=np.bool_)
        rare = np.zeros_like(unseen)
        for j, f in self._categorical:
            strings, missing = category_values(take_column(frame, f.name), f.name, f.optional)
            values = pd.Index(strings, dtype=object)
            unseen[:, j] = (self._lookups[f.name].get_indexer(values) < 0) & ~missing
            state = self._states[f.name]
            if isinstance(state, _Categorical) and state.rare:
                rare[:, j] = values.isin(state.rare) & ~missing
        return unseen, rare

    def rare_mask(self, frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
        """Shape [n, n_features]: True where a categorical value was seen when fitting, but in fewer than
        RARE_SHARE of the rows (a level of 0.3 % is normal; one seen twice in 40,000 records is not known)."""
        return self.category_masks(frame)[1]

    def unseen_mask(self, frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
        """Shape [n, n_features]: True where a categorical value was never seen when fitting."""
        return self.category_masks(frame)[0]

    def decode(self, recon: npt.NDArray[np.float32]) -> pd.DataFrame:
        """The expected value of each feature, in original units, from reconstructions [n, n_columns].

        Numeric: inverse scaling. Boolean: recon >= 0.5. Categorical: the category whose column is
        largest (never `__unseen__`); `__other__` when the folded column wins, None when `__missing__` does.
        """
        if recon.ndim != 2 or recon.shape[1] != self.n_columns:
            raise ValueError(f"expected reconstructions of shape [n, {self.n_columns}], got {recon.shape}")
        decoded: dict[str, Any] = {}
        if len(self._plain_names) == len(self.schema.features):      # numeric only: one block
            values = recon[:, self._plain_columns].astype(np.float64) * self._plain_scale + self._plain_center
            return pd.DataFrame(values, columns=self.schema.names)
        for f in self.schema.features:
            block = recon[:, self.feature_slices[f.name]].astype(np.float64)
            state = self._states[f.name]
            if isinstance(state, _Numeric):
                decoded[f.name] = block[:, 0] * state.scale + state.center
            elif isinstance(state, _Boolean):
                decoded[f.name] = block[:, 0] >= 0.5
            else:
                decoded[f.name] = _decode_category(f, state, block)
        return pd.DataFrame(decoded, columns=self.schema.names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fitted state; `from_dict` restores an identical preprocessor."""
        states: dict[str, dict[str, Any]] = {}
        for name, state in self._states.items():
            if isinstance(state, _Numeric):
                states[name] = {"center": state.center, "scale": state.scale, "fill": state.fill}
            elif isinstance(state, _Categorical):
                states[name] = {"categories": list(state.categories), "other": list(state.other),
                                "rare": list(state.rare)}
            else:
                states[name] = {}
        out: dict[str, Any] = {
            "schema": self.schema.to_dict(),
            "max_categories": self.max_categories,
            "unit_range": self.unit_range,
            "states": states,
        }
        if self.keys is not None:
            out["keys"] = self.keys.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessor:
        """Rebuild from `to_dict` output; KeyError / ValueError / TypeError on malformed input."""
        schema = Schema.from_dict(d["schema"])
        raw = d["states"]
        states: dict[str, _State] = {}
        for f in schema.features:
            s = raw[f.name]
            state: _State
            if f.kind == "numeric":
                scale = float(s["scale"])
                if not (np.isfinite(scale) and scale >= _MIN_SCALE):
                    raise ValueError(f"feature {f.name!r}: scale must be a positive normal number "
                                     f"(at least {_MIN_SCALE:.4g}), got {scale}")
                state = _Numeric(float(s["center"]), scale, float(s["fill"]))
            elif f.kind == "categorical":
                state = _Categorical(tuple(map(str, s["categories"])), tuple(map(str, s["other"])),
                                     tuple(map(str, s.get("rare", ()))))
            else:
                state = _Boolean()
            states[f.name] = state
        keys = KeyNormal.from_dict(schema, d["keys"]) if d.get("keys") is not None else None
        return cls(schema, states, max_categories=int(d["max_categories"]), unit_range=bool(d["unit_range"]),
                   keys=keys)


def _decode_category(
    f: Feature, state: _Categorical, block: npt.NDArray[np.float64]
) -> npt.NDArray[np.object_]:
    labels: list[str | None] = [*state.categories, *([OTHER] if state.other else [])]
    candidates = block[:, : len(labels)]
    if f.optional:  # the __missing__ column is last, after __unseen__
        labels.append(None)
        candidates = np.column_stack([candidates, block[:, -1]])
    result = np.full(len(block), None, dtype=object)
    if labels and len(block):
        result[:] = np.asarray(labels, dtype=object)[np.argmax(candidates, axis=1)]
    return result
