"""A record may hold at most its detector's features plus `max_extra_fields` fields (issue 28, finding 10): a
550,000-field record, well within the body limit, is refused naming the record and the count, and the other
records of its batch are stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from detector.config import Config, load_config
from detector.errors import ConfigError
from detector.records import RecordValidator
from tests.detector.conftest import HTTP_DETECTOR

URL = "/v1/detectors/web/records"


def good(i: int) -> dict[str, Any]:
    return {"ts": f"2025-03-03T00:{i:02d}:00Z", "host": "web-1", "load": 0.5, "cpu": 40.0, "latency": 100.0,
            "region": "eu-west", "note": "extra fields are kept"}


def test_a_record_with_550000_fields_is_refused_and_the_batch_goes_on(client: TestClient,
                                                                      auth: dict[str, str]) -> None:
    huge = {**good(1), **{f"f{i}": i for i in range(550_000)}}
    answer = client.post(URL, json=[good(0), huge, good(2)], headers=auth)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["accepted"] == 2
    [refused] = body["rejected"]
    assert (refused["index"], refused["field"], refused["reason"]) == (1, None, "too_many_fields")
    assert refused["message"] == ("record 1: 550,005 fields, more than the 5 features plus max_extra_fields = 1000 "
                                  "allow (1,005)")
    rejects = client.get("/v1/detectors/web/rejects").json()["rejects"]
    assert [(r["reason"], r["index"]) for r in rejects] == [("too_many_fields", 1)]


@pytest.mark.parametrize("extra, accepted", [(1000, True), (1001, False)])
def test_the_cap_counts_features_and_extra_fields_in_either_form(config: Config, extra: int, accepted: bool) -> None:
    """Flat or nested ({"fields": {...}}): the features (5) plus max_extra_fields (1000) are allowed."""
    det = config.detectors["web"]
    validator = RecordValidator(det.feature_schema, det.ts_field, det.key_field,
                                max_extra_fields=det.max_extra_fields)
    fields = {"load": 0.5, "cpu": 40.0, "latency": 100.0, "region": "eu-west", "healthy": True}
    fields |= {f"x{i}": i for i in range(extra)}
    flat = {"ts": "2025-03-03T00:00:00Z", "host": "web-1", **fields}
    nested = {"ts": "2025-03-03T00:00:00Z", "host": "web-1", "fields": fields}
    batch = validator.validate_many([flat, nested, flat])
    assert len(batch.accepted) == (3 if accepted else 0)
    assert [r.reason for r in batch.rejected] == ([] if accepted else ["too_many_fields"] * 3)


def test_max_extra_fields_is_configurable(write_config: Callable[..., Path]) -> None:
    def with_key(line: str) -> str:
        return HTTP_DETECTOR.replace('key_field = "host"', f'key_field = "host"\n{line}')

    assert load_config(write_config(with_key("max_extra_fields = 3"))).detectors["web"].max_extra_fields == 3
    with pytest.raises(ConfigError, match="max_extra_fields"):
        load_config(write_config(with_key("max_extra_fields = -1"), name="bad.toml"))
