"""JSON on the hot paths (request bodies, stored record fields): orjson where its result is the
standard library's, the standard library where it is not.

orjson parses and writes JSON about 4 and 15 times as fast as `json`, but it refuses NaN and
Infinity literals, numbers beyond float range and nesting deeper than 1024 levels, and reads an
integer beyond 64 bits as a float. Such input goes to `json` instead, so every body parses to what
`json.loads` gives and fails with its errors (validation then names the record and field).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "dumps_bytes", "loads"]

# A run of 19 or more digits that does not follow a "." may be an integer beyond 64 bits, which orjson
# would read as a float; such a body goes to json. Digits are mapped to "0" and runs found with a
# substring search: a regular expression took longer than the parse itself.
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19
_POINT = ord(".")


def _may_hold_long_integer(raw: bytes) -> bool:
    digits = raw.translate(_ZEROS)
    at = digits.find(_LONG_RUN)
    while at != -1:
        if at == 0 or digits[at - 1] != _POINT:     # after a point it is a fraction's digits (0.00123...)
            return True
        at = digits.find(_LONG_RUN, at + len(_LONG_RUN))
    return False


def loads(data: bytes | str) -> Any:
    """Parse a JSON document exactly as `json.loads` does (faster when orjson can)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not _may_hold_long_integer(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass                             # NaN, Infinity, 1e400, deep nesting or bad JSON: json decides
    return json.loads(data)


def dumps_bytes(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON (what `json.dumps` writes, without its spaces); values orjson
    cannot write (integers beyond 64 bits, non-string keys) go through `json.dumps`."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode("utf-8")


def dumps(value: Any) -> str:
    """`dumps_bytes` as text."""
    return dumps_bytes(value).decode("utf-8")
