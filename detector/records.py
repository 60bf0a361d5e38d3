"""Turn raw records (JSON objects, file rows) into validated records or reasoned rejections."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from detector import fastjson
from training.schema import Feature, Schema

__all__ = [
    "REJECT_REASONS",
    "Batch",
    "IngestResult",
    "MalformedLine",
    "RecordValidator",
    "Rejection",
    "ValidRecord",
    "parse_json_body",
    "parse_timestamp",
    "text_problem",
]

logger = logging.getLogger(__name__)

REJECT_REASONS = (
    "missing_field",
    "wrong_type",
    "not_finite",
    "bad_timestamp",
    "bad_key",
    "not_an_object",
    "malformed",
    "too_large",
    "too_many_records",
    "too_many_fields",
    "unreadable_file",
)
_RAW_LIMIT = 2000
_KEY_LIMIT = 256


class ValidRecord(NamedTuple):
    """A record that passed validation: UTC timestamp, optional key, typed fields (a NamedTuple:
    immutable, and cheap to create at one per record)."""

    ts: datetime
    key: str | None
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one record (index within its batch, or None for the whole body or file) was refused."""

    index: int | None
    field: str | None
    reason: str
    message: str
    raw: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason, "message": self.message}


@dataclass(slots=True)
class Batch:
    """The outcome of validating a batch: every input is either accepted or rejected."""

    accepted: list[ValidRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # [accepted, features] float64: every feature's value of every accepted record, when the batch is all
    # plain numbers (the scorer builds its frame from it instead of from the records' fields again)
    numeric: npt.NDArray[np.float64] | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of a batch handed to the daemon: how many records were stored, and the refusals."""

    accepted: int
    rejected: list[Rejection]


def _raw_text(raw: Any) -> str:
    if isinstance(raw, MalformedLine):
        return raw.line.replace("\x00", "\\u0000")
    try:
        text = json.dumps(raw, default=str, allow_nan=True)
    except RecursionError:
        text = f"<{type(raw).__name__} nested too deeply to show>"
    except (TypeError, ValueError):
        text = repr(raw)
    return text[:_RAW_LIMIT]


def text_problem(text: str) -> str | None:
    """Why a string cannot be stored as text (PostgreSQL refuses NUL; UTF-8 has no lone surrogates), or None:
    the one rule for every text the daemon stores (record fields here, review notes in the store)."""
    if "\x00" in text:
        return "contains a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (\\ud800-\\udfff escape), which is not valid Unicode"
    return None


_text_problem = text_problem


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _span(seconds: float) -> str:
    """A duration for a message: "3 s", "12 min", "1.5 h", "2,914,000 days"."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.0f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def _latest_allowed(now: datetime, max_future: float | None) -> datetime | None:
    """The latest record time accepted at `now` (None: no limit)."""
    if max_future is None:
        return None
    try:
        return now + timedelta(seconds=max_future)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


class _Invalid(Exception):
    def __init__(self, field_name: str | None, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.field_name, self.reason, self.problem = field_name, reason, problem


def parse_timestamp(value: Any, now: datetime) -> datetime:
    """A UTC datetime from ISO 8601 text, Unix seconds or a datetime; naive times are taken as UTC."""
    if value is None:
        return now
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, bool):
        raise ValueError("expected an ISO 8601 time or Unix seconds, got a boolean")
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("Unix time is not finite")
        ts = datetime.fromtimestamp(float(value), UTC)
    elif isinstance(value, str):
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    else:
        raise ValueError(f"expected an ISO 8601 time or Unix seconds, got {type(value).__name__}")
    if hasattr(ts, "to_pydatetime"):
        ts = ts.to_pydatetime()
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _check_value(feature: Feature, value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value) and feature.kind != "numeric"):
        if feature.optional:
            return None
        raise _Invalid(feature.name, "missing_field", "required field is missing or null")
    if feature.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(feature.name, "wrong_type", f"expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise _Invalid(feature.name, "not_finite", "expected a finite number, got an integer too large "
                                                       "for a float") from None
        if not math.isfinite(number):
            raise _Invalid(feature.name, "not_finite", f"expected a finite number, got {number}")
        return number
    if feature.kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise _Invalid(feature.name, "wrong_type", f"expected true or false, got {_describe(value)}")
    if isinstance(value, str):
        return _checked_text(feature.name, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():   # an integer column with gaps, read as floats
        return str(int(value))
    raise _Invalid(feature.name, "wrong_type", f"expected a category (string), got {_describe(value)}")


def _checked_text(name: str, value: str) -> str:
    problem = _text_problem(value)
    if problem is not None:
        raise _Invalid(name, "malformed", f"text {problem}")
    return value


def _check_extra(name: str, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return None
        raise _Invalid(name, "not_finite", f"expected a finite number, got {value}")
    if isinstance(value, str):
        return _checked_text(name, value)
    if value is None or isinstance(value, int | float | bool):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise _Invalid(name, "wrong_type", f"extra fields must be scalars, got {type(value).__name__}")


class RecordValidator:
    """Validates raw records against one detector's schema; never raises for bad data.

    `max_future` (seconds): a record timed more than this ahead of the time it is validated is refused
    (`bad_timestamp`); `max_extra_fields`: a record with more fields than the schema's features plus this
    many is refused (`too_many_fields`). None: no such limit.
    """

    def __init__(self, schema: Schema, ts_field: str = "ts", key_field: str = "key", *,
                 max_future: float | None = None, max_extra_fields: int | None = None) -> None:
        self.schema = schema
        self.ts_field = ts_field
        self.key_field = key_field
        self.max_future = max_future
        self.max_extra_fields = max_extra_fields
        self._features = {f.name: f for f in schema.features}
        self.max_fields = None if max_extra_fields is None else len(self._features) + max_extra_fields
        # the column checks read features straight from the record, so no feature may be named like these
        self._columnar = ts_field != key_field and not {ts_field, key_field} & self._features.keys()

    def _flatten(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        nested = raw.get("fields")
        if isinstance(nested, Mapping) and "fields" not in self._features:
            return dict(nested)
        return {k: v for k, v in raw.items() if k not in (self.ts_field, self.key_field)}

    def _count_fields(self, raw: Mapping[str, Any]) -> None:
        """Refuse a record with more fields than `max_fields` (counted as `_flatten` finds them)."""
        if self.max_fields is None:
            return
        nested = raw.get("fields")
        if isinstance(nested, Mapping) and "fields" not in self._features:
            count = len(nested)
        else:
            count = len(raw) - sum(name in raw for name in {self.ts_field, self.key_field})
        if count > self.max_fields:
            raise _Invalid(None, "too_many_fields",
                           f"{count:,} fields, more than the {len(self._features)} features plus max_extra_fields = "
                           f"{self.max_extra_fields} allow ({self.max_fields:,})")

    def _check_time(self, ts: datetime, now: datetime) -> None:
        """Refuse a time more than `max_future` ahead of `now`, when the receipt time is known to be now."""
        latest = _latest_allowed(now, self.max_future)
        if latest is not None and ts > latest:
            raise _Invalid(self.ts_field, "bad_timestamp",
                           f"{ts.isoformat()} is {_span((ts - now).total_seconds())} ahead of the time the record was "
                           f"received ({now.isoformat(timespec='seconds')}); records more than max_future = "
                           f"{_span(self.max_future or 0.0)} ahead are refused (a time without a zone is read as UTC)")

    def _checked_key(self, key: Any) -> str | None:
        if key is None:
            return None
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise _Invalid(self.key_field, "bad_key", f"expected a string, got {_describe(key)}")
        text = str(key)
        if len(text) > _KEY_LIMIT:
            raise _Invalid(self.key_field, "bad_key", f"longer than {_KEY_LIMIT} characters")
        problem = _text_problem(text)
        if problem is not None:
            raise _Invalid(self.key_field, "bad_key", problem)
        return text

    def _check(self, raw: Any, now: datetime) -> ValidRecord:
        if isinstance(raw, MalformedLine):
            raise _Invalid(None, "malformed", f"not valid JSON: {raw.problem}")
        if not isinstance(raw, Mapping):
            raise _Invalid(None, "not_an_object", f"expected a JSON object, got {type(raw).__name__}")
        self._count_fields(raw)
        try:
            ts = parse_timestamp(raw.get(self.ts_field), now)
        except (ValueError, TypeError, OverflowError, OSError) as exc:
            raise _Invalid(self.ts_field, "bad_timestamp", str(exc)) from None
        self._check_time(ts, now)
        key = self._checked_key(raw.get(self.key_field))
        values = self._flatten(raw)
        for name in values:
            problem = _text_problem(str(name))
            if problem is not None:
                raise _Invalid(None, "malformed", f"field name {_describe(name)} {problem}")
        fields: dict[str, Any] = {}
        for name, feature in self._features.items():
            fields[name] = _check_value(feature, values.get(name))
        for name, value in values.items():
            if name not in self._features:
                fields[str(name)] = _check_extra(str(name), value)
        return ValidRecord(ts=ts, key=key, fields=fields)

    def validate(self, raw: Any, index: int | None, now: datetime | None = None) -> ValidRecord | Rejection:
        """One record: the validated record, or a Rejection naming the record, field and problem."""
        try:
            return self._check(raw, now or datetime.now(UTC))
        except _Invalid as bad:
            where = f"record {index}" if index is not None else "record"
            what = f"field {bad.field_name!r}: " if bad.field_name else ""
            return Rejection(index, bad.field_name, bad.reason, f"{where}: {what}{bad.problem}", _raw_text(raw))

    def validate_many(self, raws: Iterable[Any], start_index: int = 0) -> Batch:
        """Every record of a batch, in order: accepted or rejected.

        The checks run column by column over the batch (`_ColumnCheck`); a record they cannot vouch
        for goes through `validate`, which gives the same outcome for it as it would alone.
        """
        now = datetime.now(UTC)
        raws = list(raws)
        check = _ColumnCheck(self, raws, now) if self._columnar else None
        vouched = check.records() if check is not None else [None] * len(raws)
        batch = Batch()
        if check is not None and check.block is not None and all(v is not None for v in vouched):
            batch.numeric = check.block
        for offset, (raw, valid) in enumerate(zip(raws, vouched, strict=True)):
            outcome = valid or self.validate(raw, start_index + offset, now)
            if isinstance(outcome, Rejection):
                batch.rejected.append(outcome)
            else:
                batch.accepted.append(outcome)
        return batch


_PLAIN_NUMBER = frozenset({float, int})


class _ColumnCheck:
    """The checks of `RecordValidator._check`, run once per column of a batch of flat JSON objects.

    Each check vouches for the records whose values it can prove valid in bulk (plain floats, short
    strings, booleans...) and leaves every other record (`None`) to `RecordValidator.validate`, so
    odd values and every rejection go through the one per-record implementation.
    """

    def __init__(self, validator: RecordValidator, raws: list[Any], now: datetime) -> None:
        self._v = validator
        self._now = now
        self._latest = _latest_allowed(now, validator.max_future)
        # a record with more keys than max_fields allows (besides its time and key) goes to `validate`
        # untouched: its names are never gathered here
        most = math.inf if validator.max_fields is None else validator.max_fields + 2
        self._ok = [type(raw) is dict and len(raw) <= most for raw in raws]
        self._dicts: list[dict[Any, Any]] = [raw if ok else {} for raw, ok in zip(raws, self._ok, strict=True)]
        self.block: npt.NDArray[np.float64] | None = None    # set by the all-numbers path
        self._floats = False                                   # ... when every value was a float already

    def _drop(self, indices: Iterable[int]) -> None:
        for i in indices:
            self._ok[i] = False

    def records(self) -> list[ValidRecord | None]:
        names: set[Any] = set().union(*self._dicts)
        extras = self._check_names(names)
        times = self._times()
        keys = self._keys()
        rows = self._plain_numbers()
        if rows is None:
            rows = list(zip(*[self._feature(f) for f in self._v.schema.features], strict=True))
        elif not extras and self._floats:
            return self._float_records(times, keys)
        feature_names = self._v.schema.names
        out: list[ValidRecord | None] = []
        for i, (d, row) in enumerate(zip(self._dicts, rows, strict=True)):
            if not self._ok[i]:
                out.append(None)
                continue
            fields = dict(zip(feature_names, row, strict=True))
            if extras and not extras.isdisjoint(d):
                try:
                    fields.update((name, _check_extra(name, value)) for name, value in d.items() if name in extras)
                except _Invalid:
                    out.append(None)
                    continue
            out.append(ValidRecord(ts=times[i], key=keys[i], fields=fields))
        return out

    def _float_records(self, times: list[datetime], keys: list[str | None]) -> list[ValidRecord | None]:
        """Every record holds exactly the features, as floats, besides its time and key: its fields are a
        copy of its own object without those two (the values are already what validation would give), in
        the schema's order."""
        ts_field, key_field = self._v.ts_field, self._v.key_field
        names = tuple(self._v.schema.names)
        copies = list(map(dict.copy, self._dicts))
        for i, fields in enumerate(copies):
            fields.pop(ts_field, None)
            fields.pop(key_field, None)
            if tuple(fields) != names:         # fields keep the schema's order, as `validate` gives them
                copies[i] = {name: fields[name] for name in names}
        new = tuple.__new__      # ValidRecord(ts, key, fields) without the generated __new__'s Python frame
        return [new(ValidRecord, (ts, key, fields)) if ok else None
                for ok, ts, key, fields in zip(self._ok, times, keys, copies, strict=True)]

    def _check_names(self, names: set[Any]) -> set[str]:
        """Leave records with an unusual field name to the per-record path; returns the extra fields' names."""
        v = self._v
        bad = {n for n in names if not isinstance(n, str) or _text_problem(n) is not None}
        if "fields" not in v._features and "fields" in names:   # the nested form, {"fields": {...}}
            self._drop(i for i, d in enumerate(self._dicts) if isinstance(d.get("fields"), Mapping))
        if bad:
            self._drop(i for i, d in enumerate(self._dicts) if not bad.isdisjoint(d))
        return {str(n) for n in names - bad} - v._features.keys() - {v.ts_field, v.key_field}

    def _times(self) -> list[datetime]:
        times: list[datetime] = []
        fromisoformat = datetime.fromisoformat
        for i, d in enumerate(self._dicts):
            value = d.get(self._v.ts_field)
            ts = None
            if type(value) is str:     # ISO 8601 text in UTC (the common case) parses as is, as parse_timestamp
                with suppress(ValueError):
                    ts = fromisoformat(value)
            if ts is None or ts.tzinfo is not UTC:
                try:
                    ts = parse_timestamp(value, self._now)
                except (ValueError, TypeError, OverflowError, OSError):
                    self._ok[i] = False
                    ts = self._now   # unused: the record goes to `validate`
            if self._latest is not None and ts > self._latest:
                self._ok[i] = False  # too far ahead: `validate` refuses it
            times.append(ts)
        return times

    def _keys(self) -> list[str | None]:
        memo: dict[tuple[type, Any], str | None] = {}
        keys: list[str | None] = []
        for i, d in enumerate(self._dicts):
            value = d.get(self._v.key_field)
            if value is None:
                keys.append(None)
                continue
            try:
                memo_key = (type(value), value)
                if memo_key not in memo:
                    memo[memo_key] = self._v._checked_key(value)
                keys.append(memo[memo_key])
            except (_Invalid, TypeError):   # TypeError: an unhashable value
                self._ok[i] = False
                keys.append(None)
        return keys

    def _plain_numbers(self) -> list[Sequence[Any]] | None:
        """Every record's feature values at once when every feature is numeric and every record holds a
        finite int or float for each (the common case): one tuple per record, ints as floats. None
        otherwise: the column checks then run feature by feature."""
        features = self._v.schema.features
        if not features or not self._dicts or any(f.kind != "numeric" for f in features):
            return None
        names = self._v.schema.names
        getter = itemgetter(*names)
        try:
            rows: list[Sequence[Any]] = (list(map(getter, self._dicts)) if len(names) > 1
                                         else [(value,) for value in map(getter, self._dicts)])
        except KeyError:           # a record lacks a feature (or is not an object)
            return None
        flat = list(chain.from_iterable(rows))
        types = set(map(type, flat))
        if not types <= _PLAIN_NUMBER:
            return None
        try:
            block = np.fromiter(flat, dtype=np.float64, count=len(flat))
        except OverflowError:      # an integer beyond float64
            return None
        if not np.isfinite(block).all():
            return None
        self.block = block.reshape(len(rows), len(names))
        self._floats = int not in types
        if int in types:
            floats: list[list[float]] = self.block.tolist()
            return list(floats)
        return rows

    def _feature(self, feature: Feature) -> list[Any]:
        """The checked values of one feature, one per record (anything for a record left to `validate`)."""
        values = [d.get(feature.name) for d in self._dicts]
        types = set(map(type, values))
        missing = type(None) in types
        if missing and not feature.optional:
            self._drop(i for i, value in enumerate(values) if value is None)
        present = types - {type(None)}
        if feature.kind == "numeric" and present <= _PLAIN_NUMBER:
            return self._numbers(feature, values, missing, int in present)
        if feature.kind == "boolean" and present <= {bool}:
            return values
        if feature.kind == "categorical" and present <= {str}:
            bad = {value for value in set(values) if value is not None and _text_problem(value) is not None}
            if bad:
                self._drop(i for i, value in enumerate(values) if value in bad)
            return values
        return self._one_by_one(feature, values)

    def _numbers(self, feature: Feature, values: list[Any], missing: bool, ints: bool) -> list[Any]:
        try:
            numbers = np.array(values, dtype=np.float64)   # None -> NaN
        except OverflowError:   # an integer beyond float64
            return self._one_by_one(feature, values)
        finite = np.isfinite(numbers)
        if not finite.all():
            self._drop(i for i in np.flatnonzero(~finite).tolist() if values[i] is not None)
        if not ints:
            return values
        as_floats = numbers.tolist()
        return [None if value is None else f for value, f in zip(values, as_floats, strict=True)] if missing \
            else as_floats

    def _one_by_one(self, feature: Feature, values: list[Any]) -> list[Any]:
        checked: list[Any] = []
        for i, value in enumerate(values):
            try:
                checked.append(_check_value(feature, value))
            except _Invalid:
                self._ok[i] = False
                checked.append(None)
        return checked


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """An NDJSON line that is not valid JSON; validation turns it into a `malformed` rejection."""

    problem: str
    line: str


def parse_json_body(body: bytes, content_type: str) -> list[Any]:
    """Records from a JSON array, a single JSON object, or NDJSON (one object per line).

    A malformed JSON document raises ValueError (the whole body is unreadable); in NDJSON a
    malformed line becomes a MalformedLine at its position and the other lines go on.
    NaN and Infinity literals are parsed, so that validation names the record and field.
    """
    text = body.decode("utf-8")
    stripped = text.strip()
    declared = "ndjson" in content_type or "jsonl" in content_type
    if not declared:
        # NDJSON is only sniffed when the body is not one JSON document: a pretty-printed
        # object also starts with "{" and spans several lines.
        try:
            doc = _loads(text)
        except ValueError:
            if not (stripped[:1] == "{" and "\n" in stripped):
                raise
        else:
            return doc if isinstance(doc, list) else [doc]
    records: list[Any] = []
    # only "\n" ends a line: str.splitlines() also splits at U+2028, U+2029 and U+0085, which JSON
    # strings may hold unescaped (JSON.stringify writes them), cutting a good record in two
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            records.append(_loads(line))
        except ValueError as exc:
            records.append(MalformedLine(str(exc), line[:_RAW_LIMIT]))
    return records


def _loads(text: str) -> Any:
    """json.loads (by way of orjson where that gives the same), with nesting too deep for the parser
    reported as ValueError (not RecursionError)."""
    try:
        return fastjson.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
