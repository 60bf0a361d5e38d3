"""Tests for record validation: every bad input becomes a Rejection naming record, field and reason."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from detector.records import (
    REJECT_REASONS,
    MalformedLine,
    RecordValidator,
    Rejection,
    ValidRecord,
    parse_json_body,
    parse_timestamp,
)
from training.schema import Feature, Schema

SCHEMA = Schema(features=(
    Feature("load", "numeric"),
    Feature("cpu", "numeric"),
    Feature("region", "categorical"),
    Feature("healthy", "boolean", optional=True),
))
NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def validator() -> RecordValidator:
    return RecordValidator(SCHEMA, ts_field="ts", key_field="host")


def good(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"ts": "2025-03-03T10:00:00Z", "host": "web-1", "load": 50.0, "cpu": 40.0,
                              "region": "eu", "healthy": True}
    record.update(changes)
    return record


def without(name: str) -> dict[str, Any]:
    record = good()
    del record[name]
    return record


BAD_CASES = [
    (without("load"), "load", "missing_field"),
    (good(cpu=None), "cpu", "missing_field"),
    (without("region"), "region", "missing_field"),
    (good(load="12.5"), "load", "wrong_type"),
    (good(load=True), "load", "wrong_type"),
    (good(load=[1.0]), "load", "wrong_type"),
    (good(healthy=2), "healthy", "wrong_type"),
    (good(healthy=0.5), "healthy", "wrong_type"),
    (good(healthy="yes"), "healthy", "wrong_type"),
    (good(region={"name": "eu"}), "region", "wrong_type"),
    (good(region=1.5), "region", "wrong_type"),
    (good(region=True), "region", "wrong_type"),
    (good(region=math.nan), "region", "missing_field"),
    (good(load=math.nan), "load", "not_finite"),
    (good(cpu=math.inf), "cpu", "not_finite"),
    (good(cpu=-math.inf), "cpu", "not_finite"),
    (good(ts="yesterday"), "ts", "bad_timestamp"),
    (good(ts="2025-13-01T00:00:00Z"), "ts", "bad_timestamp"),
    (good(ts=True), "ts", "bad_timestamp"),
    (good(ts=[2025, 3, 3]), "ts", "bad_timestamp"),
    (good(ts=math.inf), "ts", "bad_timestamp"),
    (good(ts=1e20), "ts", "bad_timestamp"),
    (good(host="h" * 257), "host", "bad_key"),
    (good(host={"id": 1}), "host", "bad_key"),
    (good(host=False), "host", "bad_key"),
    (good(extra={"nested": 1}), "extra", "wrong_type"),
    (good(extra=math.inf), "extra", "not_finite"),
]
BAD_IDS = [
    "missing-numeric", "null-numeric", "missing-categorical", "string-for-numeric", "bool-for-numeric",
    "list-for-numeric", "2-for-boolean", "half-for-boolean", "string-for-boolean", "dict-for-categorical",
    "float-for-categorical", "bool-for-categorical", "nan-for-categorical", "nan", "inf", "minus-inf",
    "ts-words", "ts-month-13", "ts-bool", "ts-list", "ts-inf", "ts-overflow", "key-too-long", "key-dict",
    "key-bool", "extra-dict", "extra-inf",
]


@pytest.mark.parametrize(("raw", "field", "reason"), BAD_CASES, ids=BAD_IDS)
def test_bad_record_is_rejected_with_index_field_and_reason(
    validator: RecordValidator, raw: dict[str, Any], field: str, reason: str
) -> None:
    outcome = validator.validate(raw, 7, NOW)
    assert isinstance(outcome, Rejection)
    assert (outcome.index, outcome.field, outcome.reason) == (7, field, reason)
    assert outcome.reason in REJECT_REASONS
    assert outcome.message.startswith(f"record 7: field {field!r}: ")
    assert outcome.raw is not None
    assert outcome.to_dict() == {"index": 7, "field": field, "reason": reason, "message": outcome.message}


def test_bad_records_do_not_stop_good_ones(validator: RecordValidator) -> None:
    raws = [good(load=1.0), good(load="x"), good(load=2.0), good(cpu=math.nan), 42, good(load=3.0)]
    batch = validator.validate_many(raws, start_index=10)
    assert [r.fields["load"] for r in batch.accepted] == [1.0, 2.0, 3.0]
    assert [(r.index, r.field, r.reason) for r in batch.rejected] == [
        (11, "load", "wrong_type"), (13, "cpu", "not_finite"), (14, None, "not_an_object")]
    assert batch.rejected[0].message.startswith("record 11: field 'load': expected a number")


@pytest.mark.parametrize("raw", [42, "text", [1, 2], None], ids=["int", "str", "list", "null"])
def test_not_an_object(validator: RecordValidator, raw: Any) -> None:
    outcome = validator.validate(raw, 3, NOW)
    assert isinstance(outcome, Rejection)
    assert (outcome.index, outcome.field, outcome.reason) == (3, None, "not_an_object")
    assert outcome.message.startswith("record 3: expected a JSON object")


def test_good_record_is_typed(validator: RecordValidator) -> None:
    outcome = validator.validate(good(load=12, healthy=1), 0, NOW)
    assert isinstance(outcome, ValidRecord)
    assert outcome.ts == datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
    assert outcome.key == "web-1"
    assert outcome.fields == {"load": 12.0, "cpu": 40.0, "region": "eu", "healthy": True}
    assert isinstance(outcome.fields["load"], float)


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, False, True])
def test_boolean_accepts_bools_and_0_1(validator: RecordValidator, value: Any) -> None:
    outcome = validator.validate(good(healthy=value), 0, NOW)
    assert isinstance(outcome, ValidRecord)
    assert outcome.fields["healthy"] is bool(value)


@pytest.mark.parametrize("raw", [without("healthy"), good(healthy=None), good(healthy=math.nan)],
                         ids=["absent", "null", "nan"])
def test_optional_field_may_be_missing(validator: RecordValidator, raw: dict[str, Any]) -> None:
    outcome = validator.validate(raw, 0, NOW)
    assert isinstance(outcome, ValidRecord)
    assert outcome.fields["healthy"] is None


def test_int_is_accepted_as_category(validator: RecordValidator) -> None:
    outcome = validator.validate(good(region=3), 0, NOW)
    assert isinstance(outcome, ValidRecord)
    assert outcome.fields["region"] == "3"


def test_int_key_becomes_string_and_missing_key_is_none(validator: RecordValidator) -> None:
    outcome = validator.validate(good(host=17), 0, NOW)
    assert isinstance(outcome, ValidRecord) and outcome.key == "17"
    outcome = validator.validate(without("host"), 0, NOW)
    assert isinstance(outcome, ValidRecord) and outcome.key is None
    outcome = validator.validate(good(host="h" * 256), 0, NOW)
    assert isinstance(outcome, ValidRecord) and outcome.key == "h" * 256


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2025-03-03T10:00:00Z", datetime(2025, 3, 3, 10, 0, tzinfo=UTC)),
        ("2025-03-03T10:00:00.250z", datetime(2025, 3, 3, 10, 0, 0, 250000, tzinfo=UTC)),
        ("2025-03-03T12:30:00+02:00", datetime(2025, 3, 3, 10, 30, tzinfo=UTC)),
        ("2025-03-03T05:00:00-05:00", datetime(2025, 3, 3, 10, 0, tzinfo=UTC)),
        ("2025-03-03T10:00:00", datetime(2025, 3, 3, 10, 0, tzinfo=UTC)),
        ("2025-03-03 10:00:00", datetime(2025, 3, 3, 10, 0, tzinfo=UTC)),
        (1741003200, datetime(2025, 3, 3, 12, 0, tzinfo=UTC)),
        (1741003200.5, datetime(2025, 3, 3, 12, 0, 0, 500000, tzinfo=UTC)),
        (datetime(2025, 3, 3, 13, 0, tzinfo=timezone(timedelta(hours=1))), datetime(2025, 3, 3, 12, 0, tzinfo=UTC)),
        (None, NOW),
    ],
    ids=["Z", "z-fraction", "plus-offset", "minus-offset", "naive", "space", "unix-int", "unix-float",
         "datetime", "null"],
)
def test_timestamps_become_utc(validator: RecordValidator, ts: Any, expected: datetime) -> None:
    outcome = validator.validate(good(ts=ts), 0, NOW)
    assert isinstance(outcome, ValidRecord)
    assert outcome.ts == expected
    assert outcome.ts.tzinfo is UTC
    assert outcome.ts.utcoffset() == timedelta(0)


def test_missing_timestamp_is_now(validator: RecordValidator) -> None:
    before = datetime.now(UTC)
    outcome = validator.validate(without("ts"), 0)
    assert isinstance(outcome, ValidRecord)
    assert before <= outcome.ts <= datetime.now(UTC)
    batch = validator.validate_many([without("ts"), without("ts")])
    assert batch.accepted[0].ts == batch.accepted[1].ts, "one batch shares one 'now'"


def test_parse_timestamp_directly() -> None:
    assert parse_timestamp("2025-03-03T10:00:00+00:00", NOW) == datetime(2025, 3, 3, 10, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_timestamp("not a time", NOW)


def test_custom_ts_field() -> None:
    validator = RecordValidator(SCHEMA, ts_field="time", key_field="host")
    outcome = validator.validate(good(time="2025-01-01T00:00:00Z"), 0, NOW)
    assert isinstance(outcome, ValidRecord)
    assert outcome.ts == datetime(2025, 1, 1, tzinfo=UTC)
    assert "time" not in outcome.fields
    bad = validator.validate(good(time="soon"), 4, NOW)
    assert isinstance(bad, Rejection)
    assert (bad.field, bad.reason) == ("time", "bad_timestamp")


def test_nested_fields_form(validator: RecordValidator) -> None:
    raw = {"ts": "2025-03-03T10:00:00Z", "host": "web-2",
           "fields": {"load": 5, "cpu": 4.0, "region": "us", "note": "hi"}}
    outcome = validator.validate(raw, 0, NOW)
    assert isinstance(outcome, ValidRecord)
    assert outcome.key == "web-2"
    assert outcome.ts == datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
    assert outcome.fields == {"load": 5.0, "cpu": 4.0, "region": "us", "healthy": None, "note": "hi"}


def test_nested_form_is_validated_too(validator: RecordValidator) -> None:
    outcome = validator.validate({"host": "a", "fields": {"load": "high", "cpu": 1.0, "region": "eu"}}, 2, NOW)
    assert isinstance(outcome, Rejection)
    assert (outcome.index, outcome.field, outcome.reason) == (2, "load", "wrong_type")


def test_extra_fields_are_kept(validator: RecordValidator) -> None:
    when = datetime(2025, 1, 1, tzinfo=UTC)
    outcome = validator.validate(good(note="deploy", count=3, ratio=0.5, flag=False, gone=None, odd=math.nan,
                                      when=when), 0, NOW)
    assert isinstance(outcome, ValidRecord)
    extras = {k: v for k, v in outcome.fields.items() if k not in SCHEMA.names}
    assert extras == {"note": "deploy", "count": 3, "ratio": 0.5, "flag": False, "gone": None, "odd": None,
                      "when": when.isoformat()}
    assert "ts" not in outcome.fields and "host" not in outcome.fields


def test_rejection_keeps_raw_text_truncated(validator: RecordValidator) -> None:
    outcome = validator.validate(good(load="x", note="n" * 5000), 0, NOW)
    assert isinstance(outcome, Rejection)
    assert outcome.raw is not None
    assert len(outcome.raw) == 2000
    assert outcome.raw.startswith('{"ts": "2025-03-03T10:00:00Z"')


# -- parse_json_body -------------------------------------------------------------------------------

def test_json_array(validator: RecordValidator) -> None:
    body = json.dumps([good(load=1), good(load=2)]).encode()
    raws = parse_json_body(body, "application/json")
    assert [r["load"] for r in raws] == [1, 2]


def test_single_object() -> None:
    assert parse_json_body(json.dumps(good()).encode(), "application/json") == [good()]


def test_pretty_printed_object_is_one_record(validator: RecordValidator) -> None:
    body = json.dumps(good(), indent=2).encode()
    assert parse_json_body(body, "application/json") == [good()]
    assert parse_json_body(json.dumps([good(), good()], indent=2).encode(), "application/json") == [good(), good()]


def test_malformed_json_document_raises() -> None:
    with pytest.raises(ValueError):
        parse_json_body(b'[{"load": 1}', "application/json")


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/jsonl", ""],
                         ids=["ndjson", "jsonl", "sniffed"])
def test_ndjson_malformed_line_becomes_rejection(validator: RecordValidator, content_type: str) -> None:
    lines = [json.dumps(good(load=1)), '{"load": 2,', "", json.dumps(good(load=3)), "[1, 2]"]
    raws = parse_json_body(("\n".join(lines) + "\n").encode(), content_type)
    assert len(raws) == 4, "blank lines are skipped"
    assert isinstance(raws[1], MalformedLine)
    assert raws[1].line == '{"load": 2,'
    batch = validator.validate_many(raws)
    assert [r.fields["load"] for r in batch.accepted] == [1.0, 3.0]
    assert [(r.index, r.field, r.reason) for r in batch.rejected] == [(1, None, "malformed"), (3, None,
                                                                                              "not_an_object")]
    assert batch.rejected[0].message.startswith("record 1: not valid JSON")
    assert batch.rejected[0].raw == '{"load": 2,'


def test_nan_literals_are_parsed_then_rejected(validator: RecordValidator) -> None:
    body = b'[{"load": NaN, "cpu": 1, "region": "eu"}, {"load": 1, "cpu": Infinity, "region": "eu"},' \
           b' {"load": 1, "cpu": -Infinity, "region": "eu"}, {"load": 1, "cpu": 1, "region": "eu"}]'
    raws = parse_json_body(body, "application/json")
    assert math.isnan(raws[0]["load"])
    batch = validator.validate_many(raws)
    assert len(batch.accepted) == 1
    assert [(r.index, r.field, r.reason) for r in batch.rejected] == [
        (0, "load", "not_finite"), (1, "cpu", "not_finite"), (2, "cpu", "not_finite")]


@pytest.mark.parametrize("order", ["schema", "reversed"])
def test_all_float_batch_fields_are_copies_in_schema_order(order: str) -> None:
    """The all-floats path takes each record's own object as its fields: a copy (the caller's object is left
    as it was), without the time and key, in the schema's order whatever order the client sent."""
    schema = Schema(features=(Feature("a", "numeric"), Feature("b", "numeric"), Feature("c", "numeric")))
    validator = RecordValidator(schema, ts_field="ts", key_field="host")
    values = {"a": 1.5, "b": -2.0, "c": 3.25}
    names = list(values) if order == "schema" else list(reversed(values))
    raws = [{"ts": f"2025-03-03T10:00:0{i}+00:00", "host": f"web-{i}", **{n: values[n] + i for n in names}}
            for i in range(3)]
    before = [dict(raw) for raw in raws]
    batch = validator.validate_many(raws)
    assert not batch.rejected and batch.numeric is not None
    assert raws == before and [list(r) for r in raws] == [list(b) for b in before]
    for i, record in enumerate(batch.accepted):
        assert list(record.fields) == ["a", "b", "c"]
        assert record.fields == {n: values[n] + i for n in values}
        assert record.fields is not raws[i]
        assert record.ts == datetime(2025, 3, 3, 10, 0, i, tzinfo=UTC) and record.ts.tzinfo is UTC
        assert record.key == f"web-{i}"


@pytest.mark.parametrize("ts", ["2025-03-03T10:00:00Z", "2025-03-03T10:00:00z", " 2025-03-03T10:00:00+00:00 ",
                                "2025-03-03T12:00:00+02:00", "2025-03-03T10:00:00", "2025-03-03 10:00:00.5+00:00",
                                1741003200, 1741003200.25])
def test_batch_times_match_parse_timestamp(ts: Any) -> None:
    """The batch path's fast ISO parse gives what parse_timestamp gives, for every form it takes."""
    schema = Schema(features=(Feature("a", "numeric"),))
    batch = RecordValidator(schema, ts_field="ts", key_field="host").validate_many([{"ts": ts, "a": 1.0}])
    assert not batch.rejected
    assert batch.accepted[0].ts == parse_timestamp(ts, NOW) and batch.accepted[0].ts.tzinfo is UTC
