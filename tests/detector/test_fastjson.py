"""detector.fastjson parses every body to what json.loads gives, and fails where it fails."""

from __future__ import annotations

import json
import math

import pytest

from detector import fastjson

SAME = [
    '[{"a": 1, "b": 2.5, "c": "x", "d": null, "e": true}]',
    '{"a": 1, "a": 2}',                                   # the last duplicate wins
    "[12345678901234567890123, -98765432109876543210]",   # beyond 64 bits: exact integers
    "[9223372036854775807, 18446744073709551615]",
    "[0.0000000000000000000012345, 0.0072113596587564995]",
    "[1e400, -1e400]",                                     # beyond float range: inf, as json reads it
    '["\\u00e9\\u2028", "12345678901234567890123"]',
    "[-0.0, 1.5e-7, 123456789.123]",
    "[" * 500 + "]" * 500,
]


@pytest.mark.parametrize("text", SAME)
def test_parses_as_json_does(text: str) -> None:
    expected = json.loads(text)
    got = fastjson.loads(text)
    assert got == expected and repr(got) == repr(expected)
    assert fastjson.loads(text.encode()) == expected


def test_nesting_beyond_the_parsers_fails_as_json_fails() -> None:
    deep = "[" * 1500 + "]" * 1500                          # deeper than orjson's limit and json's recursion
    with pytest.raises(RecursionError):
        json.loads(deep)
    with pytest.raises(RecursionError):
        fastjson.loads(deep)


def test_nan_and_infinity_literals_parse_for_validation_to_name() -> None:
    got = fastjson.loads('[{"x": NaN, "y": Infinity, "z": -Infinity}]')
    assert math.isnan(got[0]["x"]) and got[0]["y"] == math.inf and got[0]["z"] == -math.inf


@pytest.mark.parametrize("bad", ['{"a": 1', "[1,]", '{"a" 1}', "", "\ufeff[1]", '"\\ud800"x'])
def test_bad_json_fails_as_json_fails(bad: str) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(bad)
    with pytest.raises(ValueError) as got:
        fastjson.loads(bad)
    assert type(got.value) is type(expected.value)


@pytest.mark.parametrize("value", [
    {"cpu": 0.1, "load": 1e-7, "n": 3, "region": "eu", "ok": True, "gone": None},
    {"big": 2**70, "ok": [1, 2]},                      # orjson cannot write it: json does
    {1: "non-string key"},
    ["é", "\u2028", {"nested": {"deep": [1.5]}}],
])
def test_dumps_round_trips_through_json(value: object) -> None:
    text = fastjson.dumps(value)
    assert json.loads(text) == json.loads(json.dumps(value))
    assert json.loads(fastjson.dumps_bytes(value)) == json.loads(text)
