"""Three daemons on one PostgreSQL database under concurrent load: every record stored and scored exactly
once, one trainer per schedule slot, one active model, and every instance serving the same state."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from detector.store.db import head_revision
from tests.pg import fresh_database, require_postgres
from tests.support.config import WEB_FEATURES, config_text, daemon_heading, detector, write_config_file
from tests.support.daemon import REPO, Daemon
from tests.support.net import free_port
from tests.support.web import seq_record

pytestmark = pytest.mark.slow

INSTANCES = 3
RECORDS_PER_INSTANCE = 600
BATCH = 20
LOAD_SECONDS = 56.0                     # more than two 20-s training slots
SLOT = timedelta(seconds=20)
ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)   # slots are aligned to this (detector.scheduler)

def instance_config(i: int, port: int, url: str) -> str:
    """Instance i of the deployment: its own state folder, the shared store, training every 20 s."""
    return config_text(daemon_heading(port, url, state_dir=f"state-{i}"), detector(
        "web", WEB_FEATURES,
        model={"hidden": [8], "latent": 2, "epochs": 15, "batch_size": 64, "seed": 0, "device": "cpu"},
        training={"interval": "20s", "window": "30d", "min_records": 200},
        scoring={"interval": "1s", "batch_size": 100}))


def slot_of(t: datetime) -> int:
    return (t - ANCHOR) // SLOT


class Load:
    """One client thread per instance, posting its share of records in batches, paced over LOAD_SECONDS."""

    def __init__(self, daemons: list[Daemon]) -> None:
        self.daemons = daemons
        self.acked: list[int] = []
        self.failed: list[tuple[int, str]] = []           # (first seq of the batch, what went wrong)
        self.sent: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._post, args=(i,), name=f"load-{i}", daemon=True)
                        for i in range(len(daemons))]

    def _post(self, i: int) -> None:
        daemon = self.daemons[i]
        seqs = list(range(i * RECORDS_PER_INSTANCE, (i + 1) * RECORDS_PER_INSTANCE))
        batches = [seqs[j:j + BATCH] for j in range(0, len(seqs), BATCH)]
        pause = LOAD_SECONDS / len(batches)
        started = time.monotonic()
        with httpx2.Client(timeout=30) as client:
            for n, batch in enumerate(batches):
                if self._stop.is_set():
                    return
                with self._lock:
                    self.sent.update(batch)
                try:
                    response = daemon.post([seq_record(s) for s in batch], client=client)
                except httpx2.TransportError as exc:
                    with self._lock:
                        self.failed.append((batch[0], f"{exc.__class__.__name__}: {exc}"))
                    continue
                with self._lock:
                    if response.status_code == 200 and response.json() == {"accepted": len(batch), "rejected": []}:
                        self.acked.extend(batch)
                    else:
                        self.failed.append((batch[0], f"{response.status_code} {response.text[:200]}"))
                # keep the pace: batch n+1 leaves at started + (n + 1) * pause, whatever the latency
                time.sleep(max(0.0, started + (n + 1) * pause - time.monotonic()))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        assert not any(t.is_alive() for t in self.threads), f"load still running after {timeout} s"


def query(engine: sa.Engine, sql: str) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql)).all())


@pytest.fixture
def database() -> Iterator[str]:
    require_postgres()
    with fresh_database() as url:
        yield url


def test_three_daemons_share_one_postgresql_store(tmp_path: Path, database: str) -> None:
    daemons = []
    for i in range(INSTANCES):
        port = free_port()
        config = write_config_file(tmp_path / f"config-{i}.toml", instance_config(i, port, database))
        daemons.append(Daemon(config, port, tmp_path / f"state-{i}", name=f"instance-{i}"))
    engine = sa.create_engine(database, poolclass=sa.NullPool)
    load = Load(daemons)
    began = time.monotonic()
    try:
        for d in daemons:           # all at once, as replicas of a deployment start: one schema migration
            d.launch()
        for d in daemons:
            d.wait_healthy(90)
        assert len({d.token for d in daemons}) == INSTANCES          # each created its own token
        started = time.monotonic()
        load.start()
        load.join(LOAD_SECONDS + 60)
        loaded = time.monotonic()
        assert load.failed == [], f"posts not answered 200: {load.failed[:5]}"
        n = len(load.acked)
        assert n == INSTANCES * RECORDS_PER_INSTANCE

        def drained() -> bool:
            return all(d.status()["records"] == {"pending": 0, "scored": n, "rejected": 0} for d in daemons)

        daemons[0].wait_for(drained, 60, "every record scored, as seen by every instance")
        for d in daemons:
            assert d.alive(), f"{d.name} died:\n{d.tail()}"

        # every accepted record is in the store exactly once
        rows = query(engine, "SELECT fields, state, model_version_id, score FROM records WHERE detector = 'web'")
        seqs = Counter(int(fields["seq"]) for fields, *_ in rows)
        duplicated = {s: c for s, c in seqs.items() if c > 1}
        assert duplicated == {}
        assert set(seqs) == set(load.acked)
        assert len(rows) == n

        # every record scored exactly once: state, model and score set; scoring counters add up to the records
        assert Counter(state for _, state, _, _ in rows) == {"scored": n}
        assert all(model is not None and score is not None for _, _, model, score in rows)
        scored_by = [d.metric("vigil_records_scored_total", detector="web") or 0.0 for d in daemons]
        assert sum(scored_by) == n, f"records scored by each instance: {scored_by}"
        ingested_by = [d.metric("vigil_records_ingested_total", detector="web", source="http") for d in daemons]
        assert ingested_by == [RECORDS_PER_INSTANCE] * INSTANCES
        assert query(engine, "SELECT record_id, model_version_id FROM outliers "
                             "GROUP BY record_id, model_version_id HAVING count(*) > 1") == []
        [(flagged,)] = query(engine, "SELECT count(*) FROM records WHERE is_outlier")
        [(outliers,)] = query(engine, "SELECT count(*) FROM outliers")
        assert flagged == outliers

        # training: one run per 20-s slot across the instances, one first model, one active version; a
        # scheduled run may have begun in the slot that opened just now: let it end first
        deadline = time.monotonic() + 60
        while query(engine, "SELECT id FROM training_runs WHERE detector = 'web' AND result = 'running'") \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        runs = query(engine, "SELECT id, trigger, result, started_at, model_version_id, message "
                             "FROM training_runs WHERE detector = 'web' ORDER BY id")
        assert [r for r in runs if r.result in ("failed", "running", "refused")] == []
        counted = [r for r in runs if r.result != "skipped" and r.trigger in ("first", "schedule")]
        by_slot = Counter(slot_of(r.started_at) for r in counted)
        assert {s: c for s, c in by_slot.items() if c > 1} == {}, f"two runs in one slot: {counted}"
        assert [r.trigger for r in counted].count("first") == 1
        assert counted[0].trigger == "first"
        # the load outlasted two slots, so the schedule fired on every instance at least once after the first
        assert [r.trigger for r in counted].count("schedule") >= 1, counted
        models = query(engine, "SELECT id, version, status, weights, meta FROM model_versions WHERE detector = 'web'")
        assert [m.status for m in models].count("active") == 1
        assert sorted(m.id for m in models) == sorted(r.model_version_id for r in counted)
        active = next(m for m in models if m.status == "active")
        assert active.version == max(m.version for m in models)

        # any instance serves the API, with the same answers
        statuses: list[dict[str, Any]] = []

        def same_everywhere() -> bool:     # read again when a training slot fell between the reads
            statuses[:] = [d.status() for d in daemons]
            return all(s == statuses[0] for s in statuses)

        daemons[0].wait_for(same_everywhere, 30, "the same /v1/status from every instance")
        assert statuses[0]["model"]["version"] == active.version
        assert statuses[0]["outliers"] == outliers
        for d in daemons:       # each instance loads a version another one trained at its next score job (1 s)
            d.wait_for(lambda d=d: d.metric("vigil_model_info", detector="web", version=str(active.version)) == 1.0,
                       10, f"version {active.version} in vigil_model_info")
            # and accepts writes (a seq of its own, timed before the others: not beyond max_future ahead)
            assert d.post([seq_record(-d.port)]).status_code == 200

        for d in daemons:
            assert d.terminate() == 0
        print(f"\nscale-out: {n} records over {loaded - started:.0f} s, scored by instance {scored_by}, "
              f"{len(counted)} counted training runs ({len(runs) - len(counted)} skipped) in slots "
              f"{sorted(by_slot)}, active version {active.version}, {outliers} outliers, "
              f"total {time.monotonic() - began:.0f} s")
    finally:
        load._stop.set()
        for d in daemons:
            d.close()
        engine.dispose()


def test_instances_migrating_a_new_database_at_the_same_moment(database: str) -> None:
    """Replicas started together each bring the (new, empty) schema up to date at start; none may fail."""
    at = time.time() + 4                  # after the imports, so that the three upgrades overlap
    code = ("import sys, time; from detector.store.db import open_repository; "
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); open_repository(sys.argv[1]).dispose()")
    procs = [subprocess.Popen([sys.executable, "-c", code, database, repr(at)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(INSTANCES)]
    try:
        outputs = [p.communicate(timeout=60)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    failed = [out[-600:] for p, out in zip(procs, outputs, strict=True) if p.returncode != 0]
    assert failed == [], "\n---\n".join(failed)
    engine = sa.create_engine(database, poolclass=sa.NullPool)
    try:
        assert query(engine, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    finally:
        engine.dispose()
