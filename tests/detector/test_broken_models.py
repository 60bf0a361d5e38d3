"""Model versions that cannot be loaded (issue 28, finding 5), each made by corrupting the stored row with SQL:
the daemon starts, logs which version is broken and why, sets it aside as `rejected`, falls back to the
newest version that loads (or trains a new one) and shows it in status. Weights carry a SHA-256 checksum."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from detector.api.app import create_app
from detector.config import Config, load_config
from detector.daemon import Runtime, build_runtime
from detector.store.db import open_engine
from tests.detector.conftest import HTTP_DETECTOR
from tests.support.config import heading, write_config_file
from tests.support.prom import metric
from tests.support.web import WebDaemon, normal_records, query

URL = "/v1/detectors/web/records"
SET_ASIDE = "model version cannot be loaded: it is set aside as rejected"


def sql(config: Config, statement: str, **params: Any) -> None:
    """Run one statement on the store, as a person (or a fault) would, outside the daemon's code."""
    engine = open_engine(config.store_url)
    with engine.begin() as conn:
        conn.execute(text(statement), params)
    engine.dispose()


def rows(config: Config) -> list[Any]:
    engine = open_engine(config.store_url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT version, status, weights FROM model_versions ORDER BY version")).all()
    engine.dispose()
    return list(found)


def restart(config: Config) -> Runtime:
    """A new runtime on the same store: what a restart of the daemon builds (the models load here)."""
    return build_runtime(config, CollectorRegistry(), with_process_metrics=False)


def train_versions(config: Config, n: int) -> None:
    """Versions 1..n, each trained on 300 more records than the last (so their weights differ)."""
    runtime = restart(config)
    start = datetime.now(UTC) - timedelta(days=2)
    for i in range(n):
        runtime.vigil.ingest("web", normal_records(300, i, start + timedelta(hours=6 * i)), "http")
        outcome = runtime.trainer.train("web", "manual")
        assert outcome.result == "success", outcome.message
    runtime.vigil.repo.dispose()


@pytest.fixture
def config(store_url: str, tmp_path: Path) -> Config:
    """The `web` detector on SQLite and on PostgreSQL."""
    return load_config(write_config_file(tmp_path / "config.toml", heading(store_url=store_url), HTTP_DETECTOR))


@pytest.fixture
def restarted(config: Config) -> Iterator[list[Runtime]]:
    """Runtimes a test builds with `restart`, disposed of afterwards."""
    built: list[Runtime] = []
    yield built
    for runtime in built:
        runtime.vigil.repo.dispose()


def status_of(runtime: Runtime) -> dict[str, Any]:
    with TestClient(create_app(runtime, manage_jobs=False)) as client:
        answer = client.get("/v1/status")
        assert answer.status_code == 200, answer.text
        web: dict[str, Any] = answer.json()["detectors"]["web"]
        web["metrics"] = client.get("/metrics").text
        return web


def without_checksum(config: Config, version: int) -> None:
    """Drop the weights' checksum from a version's metadata, as versions saved before checksums lack it."""
    if config.store_url.startswith("postgresql"):
        sql(config, "UPDATE model_versions SET meta = meta - 'weights_sha256' WHERE version = :v", v=version)
    else:
        sql(config, "UPDATE model_versions SET meta = json_remove(meta, '$.weights_sha256') WHERE version = :v",
            v=version)


def test_unreadable_weights_fall_back_to_the_newest_version_that_loads(config: Config,
                                                                        restarted: list[Runtime]) -> None:
    """v3 and v2 hold bytes that are not safetensors (v2 saved before checksums): v1 becomes active, and the
    records are scored with it."""
    train_versions(config, 3)
    sql(config, "UPDATE model_versions SET weights = :junk WHERE version IN (2, 3)", junk=b"\x00\x01junk")
    without_checksum(config, 2)
    runtime = restart(config)
    restarted.append(runtime)
    assert [(r.version, r.status) for r in rows(config)] == [(1, "active"), (2, "rejected"), (3, "rejected")]
    runtime.vigil.ingest("web", normal_records(20, 9, datetime.now(UTC) - timedelta(minutes=30)), "http")
    runtime.scorer.score("web")
    status = status_of(runtime)
    assert status["model"]["version"] == 1
    assert status["records"]["pending"] == 0
    v3, v2 = status["rejected_models"]
    assert (v3["version"], v3["fallback_version"], v2["version"], v2["fallback_version"]) == (3, 1, 2, None)
    assert "do not match the checksum" in v3["reason"]
    assert v2["reason"].startswith("Invalid model artifact: weights are not readable safetensors data")
    assert metric(status["metrics"], "vigil_model_load_failures_total", detector="web") == 2
    assert metric(status["metrics"], "vigil_model_info", detector="web", version="1") == 1


def test_weights_of_another_version_fail_the_checksum(config: Config, restarted: list[Runtime]) -> None:
    """v1's weights copied into v2's row fit v2's network exactly; only the checksum tells them apart."""
    train_versions(config, 2)
    sql(config, "UPDATE model_versions SET weights = (SELECT weights FROM model_versions WHERE version = 1) "
                "WHERE version = 2")
    runtime = restart(config)
    restarted.append(runtime)
    status = status_of(runtime)
    assert status["model"]["version"] == 1
    [rejected] = status["rejected_models"]
    assert rejected["version"] == 2 and "do not match the checksum saved with them" in rejected["reason"]


def test_metadata_that_is_not_an_object_falls_back(config: Config, restarted: list[Runtime]) -> None:
    """JSON, but not a model's metadata object (PostgreSQL's JSONB holds only JSON: this is what it can hold)."""
    train_versions(config, 2)
    sql(config, "UPDATE model_versions SET meta = '\"oops\"' WHERE version = 2")
    runtime = restart(config)
    restarted.append(runtime)
    status = status_of(runtime)
    assert status["model"]["version"] == 1
    assert [(m["version"], m["reason"]) for m in status["rejected_models"]] == [
        (2, "its metadata is a JSON str, not an object")]


def test_versions_saved_before_checksums_load_as_before(config: Config, restarted: list[Runtime]) -> None:
    train_versions(config, 1)
    engine = open_engine(config.store_url)
    with engine.begin() as conn:
        meta = conn.execute(text("SELECT meta FROM model_versions WHERE version = 1")).scalar_one()
        meta = json.loads(meta) if isinstance(meta, str) else meta
        weights = bytes(conn.execute(text("SELECT weights FROM model_versions WHERE version = 1")).scalar_one())
        assert meta.pop("weights_sha256") == hashlib.sha256(weights).hexdigest()
        conn.execute(text("UPDATE model_versions SET meta = :meta WHERE version = 1"), {"meta": json.dumps(meta)})
    engine.dispose()
    runtime = restart(config)
    restarted.append(runtime)
    loaded = runtime.scorer._cache.get("web")
    assert loaded is not None and loaded.version == 1
    assert status_of(runtime)["rejected_models"] == []


def test_without_a_loadable_version_a_new_one_is_trained(config: Config, restarted: list[Runtime]) -> None:
    train_versions(config, 1)
    sql(config, "UPDATE model_versions SET weights = :junk WHERE version = 1", junk=b"not safetensors")
    runtime = restart(config)
    restarted.append(runtime)
    assert status_of(runtime)["model"] is None
    assert runtime.trainer.ready_for_first_model("web")        # what the score job asks every interval
    runtime.train_job("web")
    status = status_of(runtime)
    assert status["model"]["version"] == 2
    assert (status["last_training"]["trigger"], status["last_training"]["result"]) == ("first", "success")
    assert [m["version"] for m in status["rejected_models"]] == [1]


def test_the_daemon_starts_when_metadata_is_not_json(tmp_path: Path) -> None:
    """A real `vigil run` on a store whose active version's metadata is not JSON (SQLite stores JSON as text):
    it starts, logs the version and why, and scores with the version before."""
    daemon = WebDaemon(tmp_path)
    with daemon:
        config = load_config(daemon.config)
        train_versions(config, 2)
        sql(config, "UPDATE model_versions SET meta = 'not json {' WHERE version = 2")
        daemon.start()
        status = daemon.status()
        assert status["model"]["version"] == 1
        [rejected] = status["rejected_models"]
        assert rejected["version"] == 2 and rejected["reason"].startswith("its metadata is not JSON")
        daemon.ingest(normal_records(10, 7, datetime.now(UTC) - timedelta(minutes=20)))
        daemon.wait_for(lambda: daemon.status()["records"]["pending"] == 0, 60, "scoring with version 1")
        assert query(daemon.db, "SELECT DISTINCT m.version FROM records r JOIN model_versions m "
                                "ON m.id = r.model_version_id") == [(1,)]
        assert daemon.terminate() == 0
    logged = [json.loads(line) for line in daemon.log.read_text(encoding="utf-8").splitlines()
              if line.startswith("{")]
    [aside] = [e for e in logged if e.get("msg") == SET_ASIDE]
    assert (aside["level"], aside["detector"], aside["version"]) == ("error", "web", 2)
    assert aside["error"].startswith("its metadata is not JSON")
