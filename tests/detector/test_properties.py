"""Property-based tests (hypothesis): record validation, body parsing and preprocessing.

Each record is generated with a plan: for every field a value that is good or bad for a known reason. The
validator must then accept exactly the records without a bad value and reject the others naming one of the
bad fields with its reason, so the properties check the outcome, not just its shape.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detector.records import REJECT_REASONS, RecordValidator, Rejection, ValidRecord, parse_json_body
from training.preprocess import UNSEEN, Preprocessor
from training.schema import Feature, Schema

PROPERTIES = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KINDS = ("numeric", "categorical", "boolean")
TS, KEY = "ts", "host"

# --- record validation --------------------------------------------------------------------------------------

GOOD_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12)
LONE_SURROGATE = st.sampled_from(["\ud800", "a\udfffb", "\udbff"])
NON_SCALAR = st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)


@dataclass(frozen=True)
class Planned:
    raw: Any
    bad: frozenset[tuple[str | None, str]]       # (field, reason) of every bad part; empty: must be accepted


def good_value(kind: str, optional: bool) -> st.SearchStrategy[Any]:
    missing = st.none() if optional else st.nothing()
    if kind == "numeric":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**15), 10**15) | missing
    if kind == "boolean":
        return st.booleans() | st.sampled_from([0, 1, 0.0, 1.0]) | missing
    return (GOOD_TEXT | st.integers(-(10**15), 10**15) | st.integers(-1000, 1000).map(float) | missing
            | (st.just(math.nan) if optional else st.nothing()))


def bad_value(kind: str, optional: bool) -> st.SearchStrategy[tuple[Any, str]]:
    """A value and the reason it must be rejected."""
    options = [st.tuples(NON_SCALAR, st.just("wrong_type"))]
    if not optional:
        options.append(st.tuples(st.none(), st.just("missing_field")))
    if kind == "numeric":
        options += [st.tuples(st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**309)]),
                              st.just("not_finite")),
                    st.tuples(st.booleans() | GOOD_TEXT, st.just("wrong_type"))]
    elif kind == "boolean":
        options.append(st.tuples(GOOD_TEXT | st.sampled_from([2, -1, 0.5]), st.just("wrong_type")))
    else:
        options += [st.tuples(st.booleans() | st.sampled_from([0.5, math.inf]), st.just("wrong_type")),
                    st.tuples(LONE_SURROGATE | st.sampled_from(["\x00", "a\x00"]), st.just("malformed"))]
        if not optional:
            options.append(st.tuples(st.just(math.nan), st.just("missing_field")))
    return st.one_of(options)


good_ts = (st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                        timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
           | st.integers(0, 4_000_000_000) | st.floats(0, 4e9) | st.none())
bad_ts = (st.sampled_from(["yesterday", "", "2025-13-01T00:00:00", "\x00"]) | st.booleans() | NON_SCALAR
          | st.sampled_from([math.nan, math.inf, 1e300, -1e300]))
good_key = (st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=256)
            | st.integers(-(10**30), 10**30) | st.none())
bad_key = (st.booleans() | st.floats() | NON_SCALAR | st.text(min_size=257, max_size=300).filter(lambda s: len(s) > 256)
           | LONE_SURROGATE | st.just("web\x001"))
extra_good = st.none() | st.booleans() | st.integers() | st.floats(allow_infinity=False) | GOOD_TEXT
extra_bad = st.one_of(st.tuples(NON_SCALAR, st.just("wrong_type")),
                      st.tuples(st.sampled_from([math.inf, -math.inf]), st.just("not_finite")),
                      st.tuples(LONE_SURROGATE | st.just("\x00"), st.just("malformed")))


@st.composite
def schemas(draw: st.DrawFn) -> Schema:
    n = draw(st.integers(1, 5))
    return Schema(tuple(Feature(f"f{i}", draw(st.sampled_from(KINDS)), draw(st.booleans())) for i in range(n)))


@st.composite
def planned_records(draw: st.DrawFn, schema: Schema) -> Planned:
    if draw(st.integers(0, 9)) == 0:                                   # not an object at all
        return Planned(draw(st.none() | st.integers() | GOOD_TEXT | st.lists(st.integers(), max_size=2)),
                       frozenset({(None, "not_an_object")}))
    bad: set[tuple[str | None, str]] = set()
    fields: dict[str, Any] = {}
    for f in schema.features:
        choice = draw(st.sampled_from(["good", "good", "bad", "absent"]))
        if choice == "good":
            fields[f.name] = draw(good_value(f.kind, f.optional))
        elif choice == "bad":
            fields[f.name], reason = draw(bad_value(f.kind, f.optional))
            bad.add((f.name, reason))
        elif not f.optional:
            bad.add((f.name, "missing_field"))
    for i in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            fields[f"x{i}"] = draw(extra_good)
        else:
            fields[f"x{i}"], reason = draw(extra_bad)
            bad.add((f"x{i}", reason))
    if draw(st.integers(0, 9)) == 0:
        fields[draw(LONE_SURROGATE | st.just("n\x00"))] = 1
        bad.add((None, "malformed"))
    head: dict[str, Any] = {}
    if draw(st.booleans()):
        if draw(st.integers(0, 4)) == 0:
            head[TS] = draw(bad_ts)
            bad.add((TS, "bad_timestamp"))
        else:
            head[TS] = draw(good_ts)
    if draw(st.booleans()):
        if draw(st.integers(0, 4)) == 0:
            head[KEY] = draw(bad_key)
            bad.add((KEY, "bad_key"))
        else:
            head[KEY] = draw(good_key)
    raw = {**head, "fields": fields} if draw(st.booleans()) else {**head, **fields}
    return Planned(raw, frozenset(bad))


@st.composite
def batches(draw: st.DrawFn) -> tuple[Schema, list[Planned], int]:
    schema = draw(schemas())
    return schema, draw(st.lists(planned_records(schema), max_size=12)), draw(st.integers(0, 1000))


def check_accepted(schema: Schema, record: ValidRecord) -> None:
    assert record.ts.tzinfo is UTC
    assert record.key is None or (isinstance(record.key, str) and len(record.key) <= 256)
    for f in schema.features:
        value = record.fields[f.name]
        if value is None:
            assert f.optional
        elif f.kind == "numeric":
            assert type(value) is float and math.isfinite(value)
        elif f.kind == "boolean":
            assert type(value) is bool
        else:
            assert type(value) is str
    for name, value in record.fields.items():
        assert isinstance(name, str)
        if isinstance(value, str):
            value.encode("utf-8")                  # storable text: no lone surrogates
            assert "\x00" not in value
        elif isinstance(value, float):
            assert math.isfinite(value)


@PROPERTIES
@given(batch=batches())
@example(batch=(Schema((Feature("f0", "numeric"),)), [Planned({"f0": 10**400}, frozenset({("f0", "not_finite")}))], 0))
def test_every_record_is_accepted_or_rejected_exactly_once(batch: tuple[Schema, list[Planned], int]) -> None:
    schema, planned, start = batch
    validator = RecordValidator(schema, ts_field=TS, key_field=KEY)
    result = validator.validate_many([p.raw for p in planned], start_index=start)

    assert len(result.accepted) + len(result.rejected) == len(planned)           # never lost, never both
    indexes = [r.index for r in result.rejected]
    assert indexes == sorted(set(indexes))
    expected_rejected = [start + i for i, p in enumerate(planned) if p.bad]
    assert indexes == expected_rejected                                          # exactly the bad ones
    for rejection in result.rejected:
        assert rejection.index is not None
        p = planned[rejection.index - start]
        assert (rejection.field, rejection.reason) in p.bad, (rejection, p)
        assert rejection.reason in REJECT_REASONS
        assert rejection.message.startswith(f"record {rejection.index}: ")
        if rejection.field is not None:
            assert f"field {rejection.field!r}" in rejection.message
        assert rejection.raw is not None and "\x00" not in rejection.raw
        rejection.raw.encode("utf-8")
        json.dumps(rejection.to_dict(), allow_nan=False)
    for record in result.accepted:
        check_accepted(schema, record)


@PROPERTIES
@given(ts=good_ts.filter(lambda t: t is not None))
def test_timestamps_come_back_in_utc_at_the_same_instant(ts: Any) -> None:
    validator = RecordValidator(Schema((Feature("f0", "numeric"),)), ts_field=TS, key_field=KEY)
    record = validator.validate({TS: ts, "f0": 1.0}, 0)
    assert isinstance(record, ValidRecord)
    assert record.ts.tzinfo is UTC
    if isinstance(ts, str):
        parsed = datetime.fromisoformat(ts)
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
        assert record.ts == parsed
    else:
        assert abs(record.ts - (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=float(ts)))) < timedelta(
            milliseconds=1)


def typed_fields(fields: dict[str, Any]) -> list[tuple[str, type, Any]]:
    """Fields in order with their types: 1 and 1.0 (or True) are different outcomes here."""
    return [(name, type(value), value) for name, value in fields.items()]


@PROPERTIES
@given(batch=batches(), copies=st.integers(1, 3))
def test_batch_validation_agrees_with_record_by_record(batch: tuple[Schema, list[Planned], int], copies: int) -> None:
    """validate_many checks a batch column by column: each record's outcome must be the one `validate` gives it
    alone (same values and types, same rejection), whatever the rest of the batch holds."""
    schema, planned, start = batch
    validator = RecordValidator(schema, ts_field=TS, key_field=KEY)
    raws = [p.raw for p in planned] * copies
    result = validator.validate_many(raws, start_index=start)
    now = datetime.now(UTC)
    alone = [validator.validate(raw, start + i, now) for i, raw in enumerate(raws)]
    assert [(r.to_dict(), r.raw) for r in result.rejected] == [
        (r.to_dict(), r.raw) for r in alone if isinstance(r, Rejection)]
    expected = [(raw, r) for raw, r in zip(raws, alone, strict=True) if isinstance(r, ValidRecord)]
    assert len(result.accepted) == len(expected)
    for got, (raw, want) in zip(result.accepted, expected, strict=True):
        assert (got.key, typed_fields(got.fields)) == (want.key, typed_fields(want.fields))
        if raw.get(TS) is not None:            # without a time, each call stamps its own `now`
            assert got.ts == want.ts and got.ts.tzinfo is UTC


# --- parse_json_body ----------------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
                | st.text(max_size=10) | st.sampled_from(["\u2028", "a\u2029b", "\x85", "\x1c", "\r", "{", "\\"]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=15)
CONTENT_TYPES = ["application/json", "application/x-ndjson", "application/jsonl", "", "text/plain; charset=utf-8"]


def canonical(values: list[Any]) -> str:
    """NaN != NaN, so results are compared by their JSON text."""
    return json.dumps(values, allow_nan=True, sort_keys=True, default=repr)


def dumps(value: Any, ascii_only: bool, indent: int | None = None) -> bytes:
    return json.dumps(value, allow_nan=True, ensure_ascii=ascii_only, indent=indent).encode("utf-8", "surrogatepass")


@PROPERTIES
@given(value=json_values, ascii_only=st.booleans(), indent=st.none() | st.just(2),
       content_type=st.sampled_from(["application/json", "", "text/plain"]))
def test_a_json_document_round_trips(value: Any, ascii_only: bool, indent: int | None, content_type: str) -> None:
    """An array gives its items, any other document itself as one record (pretty-printed or not)."""
    body = dumps(value, ascii_only, indent)
    try:
        records = parse_json_body(body, content_type)
    except ValueError:
        assert not ascii_only        # only a raw lone surrogate (not UTF-8) may make a valid document unreadable
        return
    assert canonical(records) == canonical(value if isinstance(value, list) else [value])


@PROPERTIES
@given(values=st.lists(json_values, max_size=6), ascii_only=st.booleans(),
       content_type=st.sampled_from(CONTENT_TYPES), crlf=st.booleans())
@example(values=[{"region": "eu\u2028west"}, {"region": "a\x85b"}], ascii_only=False,
         content_type="application/x-ndjson", crlf=False)
def test_ndjson_round_trips_or_is_refused(values: list[Any], ascii_only: bool, content_type: str,
                                          crlf: bool) -> None:
    """One value per line (LF or CRLF): declared NDJSON gives the values back in order, whatever characters
    the strings hold; undeclared, the values or a ValueError. Nothing else is ever raised."""
    body = (b"\r\n" if crlf else b"\n").join(dumps(v, ascii_only) for v in values)
    declared = "ndjson" in content_type or "jsonl" in content_type
    try:
        body.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:             # a lone surrogate written raw (ensure_ascii=False)
        utf8 = False
    try:
        records = parse_json_body(body, content_type)
    except ValueError:
        assert not (declared and utf8)
        return
    except Exception as exc:              # anything else would be a 500 in the API
        pytest.fail(f"parse_json_body raised {exc!r}")
    if declared:
        assert canonical(records) == canonical(values)
        return
    # sniffed: one document (a single value, or an array written on one line) or NDJSON lines
    one = values[0] if len(values) == 1 and isinstance(values[0], list) else values
    assert canonical(records) in {canonical(values), canonical(one)}


@PROPERTIES
@given(body=st.binary(max_size=300), content_type=st.sampled_from(CONTENT_TYPES))
def test_any_bytes_parse_or_raise_value_error(body: bytes, content_type: str) -> None:
    try:
        records = parse_json_body(body, content_type)
    except ValueError:                     # UnicodeDecodeError is a ValueError
        return
    assert isinstance(records, list)


# --- preprocessing --------------------------------------------------------------------------------------------

CATEGORIES = ("a", "b", "c", "d", "e")


@st.composite
def frames(draw: st.DrawFn) -> tuple[Schema, pd.DataFrame]:
    schema = draw(schemas())
    n = draw(st.integers(1, 40))
    columns: dict[str, Any] = {}
    for f in schema.features:
        missing = st.none() if f.optional else st.nothing()
        if f.kind == "numeric":
            values = st.floats(-1e300, 1e300) | st.integers(-1000, 1000).map(float) | missing
        elif f.kind == "boolean":
            values = st.booleans() | missing
        else:
            values = st.sampled_from(CATEGORIES) | st.integers(0, 3) | missing
        column = draw(st.lists(values, min_size=n, max_size=n))
        columns[f.name] = pd.Series(column, dtype=float if f.kind == "numeric" else object)
    columns["extra"] = ["ignored"] * n
    return schema, pd.DataFrame(columns)


@PROPERTIES
@given(data=frames(), max_categories=st.integers(1, 6), unit_range=st.booleans())
def test_transform_is_finite_float32_and_survives_a_round_trip(data: tuple[Schema, pd.DataFrame],
                                                               max_categories: int, unit_range: bool) -> None:
    schema, frame = data
    pre = Preprocessor.fit(frame, schema, max_categories=max_categories, unit_range=unit_range)
    x = pre.transform(frame)
    assert x.dtype == np.float32
    assert x.shape == (len(frame), pre.n_columns) == (len(frame), len(pre.columns))
    assert np.isfinite(x).all()
    slices = [pre.feature_slices[f.name] for f in schema.features]
    assert slices[0].start == 0 and slices[-1].stop == pre.n_columns
    assert all(a.stop == b.start for a, b in itertools.pairwise(slices))

    restored = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert restored.columns == pre.columns
    np.testing.assert_array_equal(restored.transform(frame), x)
    assert restored.to_dict() == pre.to_dict()
    for f in schema.features:
        block = x[:, pre.feature_slices[f.name]]
        if f.kind == "categorical":                                    # one-hot: exactly one column lit
            np.testing.assert_array_equal(block.sum(axis=1), np.ones(len(frame), dtype=np.float32))
            assert not block[:, pre.columns[pre.feature_slices[f.name]].index(f"{f.name}={UNSEEN}")].any()
        elif f.kind == "boolean":
            assert set(np.unique(block[:, 0])) <= {0.0, 0.5, 1.0}


@PROPERTIES
@given(data=frames(), unseen=st.text(min_size=1, max_size=8).filter(lambda s: s not in CATEGORIES
                                                                     and not s.isdigit()))
def test_unseen_categories_light_only_the_unseen_column(data: tuple[Schema, pd.DataFrame], unseen: str) -> None:
    schema, frame = data
    pre = Preprocessor.fit(frame, schema)
    changed = frame.copy()
    categorical = [f.name for f in schema.features if f.kind == "categorical"]
    for name in categorical:
        changed[name] = pd.Series([unseen] * len(frame), dtype=object)
    before, after = pre.transform(frame), pre.transform(changed)
    for f in schema.features:
        cols = pre.feature_slices[f.name]
        if f.kind != "categorical":
            np.testing.assert_array_equal(after[:, cols], before[:, cols])   # other features untouched
            continue
        labels = pre.columns[cols]
        expected = np.zeros((len(frame), len(labels)), dtype=np.float32)
        expected[:, labels.index(f"{f.name}={UNSEEN}")] = 1.0
        np.testing.assert_array_equal(after[:, cols], expected)
    mask = pre.unseen_mask(changed)
    assert mask.shape == (len(frame), len(schema.features))
    assert [bool(mask[:, j].all()) for j in range(len(schema.features))] == [
        f.kind == "categorical" for f in schema.features]


@PROPERTIES
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_value_encodes_to_a_finite_float32(value: float) -> None:
    """Validation accepts any finite float (1e39, -1e308); fitted on ordinary data, the encoding stays finite."""
    schema = Schema((Feature("cpu", "numeric"),))
    pre = Preprocessor.fit(pd.DataFrame({"cpu": np.linspace(10.0, 90.0, 50)}), schema)
    x = pre.transform(pd.DataFrame({"cpu": [value]}))
    assert np.isfinite(x).all()
    assert (x[0, 0] > 0) == (value > 50.0) or value == 50.0


def test_rejection_dict_is_json() -> None:
    rejection = Rejection(0, "cpu", "not_finite", "record 0: field 'cpu': expected a finite number, got nan")
    assert json.loads(json.dumps(rejection.to_dict()))["reason"] == "not_finite"
