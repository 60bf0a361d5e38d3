"""The records and the shared trained model of the alerting tests (tests/detector/test_alerting.py,
test_score_on_ingest.py): hosts h0, h1... whose cpu and latency follow the load, and two kinds of anomaly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.store.types import ModelVersion
from tests.detector.conftest import HTTP_DETECTOR
from tests.support.config import heading, write_config_file

__all__ = ["LATER", "T0", "install", "normal", "slow", "spike", "trained_model"]

T0 = datetime(2026, 11, 1, tzinfo=UTC)
LATER = T0 + timedelta(days=1)


def normal(n: int, seed: int, start: datetime = T0, noise: float = 1.0, hosts: int = 3) -> list[dict[str, Any]]:
    """One record a minute, hosts h0, h1... in turn; cpu and latency follow the load."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        load = float(rng.uniform(30, 80) if noise < 1 else rng.uniform(10, 100))
        out.append({"ts": (start + timedelta(minutes=i)).isoformat(), "host": f"h{i % hosts}", "load": load,
                    "cpu": 0.8 * load + float(rng.normal(0, 2 * noise)),
                    "latency": 20 + 0.05 * load + float(rng.normal(0, 3 * noise)),
                    "region": "eu" if i % 2 else "us", "healthy": True})
    return out


def spike(record: dict[str, Any]) -> dict[str, Any]:
    """CPU pinned while the load is low: far above the threshold, cpu and load contribute most."""
    return dict(record, cpu=95.0, load=12.0)


def slow(record: dict[str, Any]) -> dict[str, Any]:
    """Latency alone far above what the load explains."""
    return dict(record, latency=record["latency"] + 40.0)


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelVersion]:
    """One model trained by the daemon's trainer, shared by the tests (each installs it in its own store).

    A fixture: a test module that uses it imports it (module scope: one model per such module)."""
    folder = tmp_path_factory.mktemp("trained")
    path = write_config_file(folder / "config.toml", heading(port=None), HTTP_DETECTOR)
    runtime = build_runtime(load_config(path), CollectorRegistry(), with_process_metrics=False)
    runtime.vigil.ingest("web", normal(600, 1), "http")
    assert runtime.trainer.train("web", "first").result == "success"
    model = runtime.vigil.repo.active_model("web")
    assert model is not None
    yield model
    runtime.vigil.repo.dispose()


def install(runtime: Runtime, m: ModelVersion) -> Runtime:
    """Save the shared model version in the runtime's store as its active model."""
    assert m.weights is not None
    runtime.vigil.repo.save_model("web", m.weights, m.meta, m.threshold, m.n_records, m.window_start, m.window_end)
    return runtime
