"""Fixtures for daemon tests: a config on a real SQLite file, a runtime, and the real HTTP app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from detector.api.app import create_app
from detector.config import Config, load_config
from detector.daemon import Runtime, build_runtime
from detector.store.db import open_engine, session_factory, upgrade
from detector.store.repository import Repository
from tests.support.config import heading, write_config_file

HTTP_DETECTOR = """
[detectors.web]
source = { type = "http" }
key_field = "host"

[detectors.web.features]
load = "numeric"
cpu = "numeric"
latency = "numeric"
region = "categorical"
healthy = { kind = "boolean", optional = true }

[detectors.web.model]
hidden = [16]
latent = 2
epochs = 30
batch_size = 64
patience = 5
seed = 0
device = "cpu"

[detectors.web.threshold]
target_fpr = 0.01
calibration_folds = 1   # one network per training run keeps these tests quick (tests/training cover the folds)

[detectors.web.training]
interval = "1h"
window = "30d"
min_records = 200
max_records = 5000

[detectors.web.scoring]
interval = "1s"
batch_size = 500
"""


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a config file in tmp_path: [daemon] and [http] defaults plus the given text."""

    def write(body: str = HTTP_DETECTOR, name: str = "config.toml") -> Path:
        return write_config_file(tmp_path / name, heading(), body)

    return write


@pytest.fixture
def config(write_config: Callable[[str], Path]) -> Config:
    return load_config(write_config(HTTP_DETECTOR))


@pytest.fixture
def runtime(config: Config) -> Runtime:
    """A runtime on a real SQLite file in tmp_path, with its own registry (jobs not started)."""
    return build_runtime(config, CollectorRegistry(), with_process_metrics=False)


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    """The real FastAPI app over the runtime; jobs are driven by the tests, not the scheduler."""
    with TestClient(create_app(runtime, manage_jobs=False)) as test_client:
        yield test_client


@pytest.fixture
def auth(runtime: Runtime) -> dict[str, str]:
    return {"Authorization": f"Bearer {runtime.token}"}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """A migrated store (SQLite file and PostgreSQL, by `store_url`'s parameter)."""
    engine = open_engine(store_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def repo(sessions: sessionmaker[Session]) -> Repository:
    return Repository(sessions)
