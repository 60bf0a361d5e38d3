"""Sequence mode in the daemon: training reads times and keys, scoring completes each key's window
from the store, and a record is scored exactly as the library scores the whole series."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from detector.api.app import create_app
from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from training.fit import KEY_COLUMN, TS_COLUMN
from training.fitted import FittedModel

SEQUENCE_DETECTOR = """
[detectors.series]
source = { type = "http" }
key_field = "host"

[detectors.series.features]
value = "numeric"

[detectors.series.model]
hidden = [8]
latent = 4
epochs = 25
batch_size = 64
patience = 5
seed = 0
device = "cpu"
window = 8
arch = "conv"
time_features = true
memory_size = 2000

[detectors.series.training]
interval = "1h"
window = "30d"
min_records = 200
max_records = 5000
first_window_trim = 0.0

[detectors.series.scoring]
interval = "1s"
batch_size = 50
"""

START = datetime(2026, 3, 2, tzinfo=UTC)
URL = "/v1/detectors/series/records"


def series(host: str, n: int, start: int = 0, spike: int | None = None) -> list[dict[str, Any]]:
    """A smooth daily-ish wave per host, 10 minutes apart; `spike` puts a jump at that index."""
    phase = 0.0 if host == "a" else 1.0
    out = []
    for i in range(start, start + n):
        value = math.sin(i / 12.0 + phase) + 0.02 * math.cos(i * 1.7)
        if spike is not None and i == spike:
            value += 4.0
        out.append({"ts": (START + timedelta(minutes=10 * i)).isoformat(), "host": host, "value": value})
    return out


@pytest.fixture
def runtime(write_config: Callable[[str], Path]) -> Runtime:
    return build_runtime(load_config(write_config(SEQUENCE_DETECTOR)), CollectorRegistry(),
                         with_process_metrics=False)


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime, manage_jobs=False)) as test_client:
        yield test_client


def test_sequence_detector_scores_with_each_keys_history(client: TestClient, runtime: Runtime) -> None:
    auth = {"Authorization": f"Bearer {runtime.token}"}
    history = series("a", 300) + series("b", 300)
    assert client.post(URL, json=history, headers=auth).status_code == 200
    outcome = runtime.trainer.train("series", "first")
    assert outcome.result == "success", outcome.message
    assert runtime.scorer.score("series") == 600

    # new records arrive in small batches (batch_size 50): the first records of each batch need
    # the earlier records of their key, already scored and stored, to complete their windows
    later = series("a", 60, start=300, spike=330) + series("b", 60, start=300)
    assert client.post(URL, json=later, headers=auth).status_code == 200
    assert runtime.scorer.score("series") == 120

    outliers = client.get("/v1/outliers", params={"detector": "series", "limit": 1000}).json()["outliers"]
    spike_ts = (START + timedelta(minutes=3300)).isoformat()
    flagged = {(o["key"], o["ts"][:19]) for o in outliers}
    assert ("a", spike_ts[:19]) in flagged

    # every new record scored as the library scores the whole series at once
    active = runtime.vigil.repo.active_model("series")
    assert active is not None and active.weights is not None
    model = FittedModel.from_artifact(active.weights, active.meta)
    assert model.needs_history
    everything = history + later
    frame = pd.DataFrame({"value": [r["value"] for r in everything],
                          TS_COLUMN: pd.to_datetime([r["ts"] for r in everything], utc=True),
                          KEY_COLUMN: [r["host"] for r in everything]})
    expected = model.score(frame).scores[600:]
    stored = client.get("/v1/outliers", params={"detector": "series", "limit": 1000}).json()["outliers"]
    assert stored
    rows = runtime.vigil.repo.recent_scored("series", 1000)
    by_key = {(r[0].key, r[0].ts.isoformat()): r[1] for r in rows}
    got = np.array([by_key[(r["host"], datetime.fromisoformat(r["ts"]).isoformat())] for r in later])
    np.testing.assert_allclose(got, expected, rtol=1e-4)
