"""SIGKILL at random moments, on SQLite and on PostgreSQL: a restarted daemon loses no acknowledged record,
stores none twice, scores none twice, and never activates a model whose training run did not finish.

Each back end gets STORES fresh stores; on each, KILLS_PER_STORE trials run back to back: start the
daemon (the restart of the previous trial), check what the restart did, post records from a client
thread, SIGKILL after a random delay (`random.Random(trial)`), check the store the dead process left.
A last start per store waits until every record is scored (a first model trains if none survived).
Kills land while records are posted, while the first model or a scheduled one trains (training lasts
about a second: `max_train_time`, a 3-s schedule), and while pending records are scored.

The moment between saving a model and recording its run's success is too short for random kills to
hit; a last test (PostgreSQL) holds a lock on the run's row so that the daemon waits there, and kills it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from tests.pg import fresh_database, require_postgres
from tests.support.config import WEB_FEATURES, config_text, daemon_heading, detector, write_config_file
from tests.support.daemon import Daemon
from tests.support.net import free_port
from tests.support.web import seq_record
from training.fitted import FittedModel

pytestmark = pytest.mark.slow

STORES = 6
KILLS_PER_STORE = 5                     # 30 kills per back end
DELAY = (0.3, 3.0)                      # seconds from start to SIGKILL
BATCH = 10
PAUSE = 0.03                            # between two posts of the client

def crash_config(port: int, url: str) -> str:
    """A daemon whose training runs are cut at `max_train_time` and scheduled every 3 s, scoring 20 a batch."""
    return config_text(daemon_heading(port, url), detector(
        "web", WEB_FEATURES,
        model={"hidden": [8], "latent": 2, "epochs": 1000000, "patience": 1000000, "batch_size": 64, "seed": 0,
               "device": "cpu", "max_train_time": "0.5s"},
        training={"interval": "3s", "window": "30d", "min_records": 150, "max_records": 1000,
                  "first_window_trim": 0.0},
        scoring={"interval": "1s", "batch_size": 20}))


def crash_daemon(directory: Path, url: str) -> Daemon:
    """A forked daemon (dozens of restarts) on `crash_config` in `directory`."""
    port = free_port()
    config = write_config_file(directory / "config.toml", crash_config(port, url))
    return Daemon(config, port, directory / "state", fork=True)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


@dataclass
class Ledger:
    """What the clients of one store were told: seqs acknowledged with 200, and seqs whose answer never came."""

    seqs: Iterator[int] = field(default_factory=itertools.count)
    acked: set[int] = field(default_factory=set)
    uncertain: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


class Poster(threading.Thread):
    """Posts batches of fresh seqs until stopped or until the daemon stops answering."""

    def __init__(self, daemon: Daemon, ledger: Ledger) -> None:
        super().__init__(name="poster", daemon=True)
        self.daemon_proc = daemon
        self.ledger = ledger
        self.in_flight = False
        self.posted = 0
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        with httpx2.Client(timeout=10) as client:
            while not self._halt.is_set():
                batch = [next(self.ledger.seqs) for _ in range(BATCH)]
                self.in_flight = True
                try:
                    response = self.daemon_proc.post([seq_record(s) for s in batch], client=client)
                except httpx2.TransportError:
                    self.ledger.uncertain.update(batch)     # killed before it answered: stored or not
                    return
                finally:
                    self.in_flight = False
                if response.status_code == 200:
                    self.ledger.acked.update(batch)
                    self.posted += len(batch)
                else:
                    self.ledger.uncertain.update(batch)
                    self.ledger.errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                time.sleep(PAUSE)


@dataclass(frozen=True)
class RecordState:
    id: int
    seq: int
    state: str
    model_version_id: int | None
    is_outlier: bool


@dataclass
class Snapshot:
    records: list[RecordState]
    outliers: list[sa.Row[Any]]     # record_id, model_version_id
    models: list[sa.Row[Any]]       # id, version, status
    runs: list[sa.Row[Any]]         # id, trigger, result, message, model_version_id

    @property
    def active(self) -> int | None:
        ids = [m.id for m in self.models if m.status == "active"]
        return ids[0] if ids else None

    @property
    def running(self) -> list[int]:
        return [r.id for r in self.runs if r.result == "running"]

    @property
    def pending(self) -> int:
        return sum(1 for r in self.records if r.state == "pending")

    @property
    def scored(self) -> int:
        return sum(1 for r in self.records if r.state == "scored")


def snapshot(engine: sa.Engine) -> Snapshot:
    """The store as it is, read with plain SQL (not through the daemon's code)."""
    with engine.connect() as conn:
        records = [
            RecordState(r.id, int(_json(r.fields)["seq"]), r.state, r.model_version_id, bool(r.is_outlier))
            for r in conn.execute(sa.text(
                "SELECT id, fields, state, model_version_id, is_outlier FROM records WHERE detector = 'web'"))
        ]
        outliers = list(conn.execute(sa.text(
            "SELECT record_id, model_version_id FROM outliers WHERE detector = 'web'")))
        models = list(conn.execute(sa.text(
            "SELECT id, version, status FROM model_versions WHERE detector = 'web' ORDER BY version")))
        runs = list(conn.execute(sa.text(
            "SELECT id, trigger, result, message, model_version_id FROM training_runs "
            "WHERE detector = 'web' ORDER BY id")))
    return Snapshot(records, outliers, models, runs)


def check_store(snap: Snapshot, ledger: Ledger, when: str) -> None:
    """The invariants that must hold whenever and however the daemon stopped."""
    seqs = Counter(r.seq for r in snap.records)
    assert {s: n for s, n in seqs.items() if n > 1} == {}, f"{when}: records stored twice"
    assert ledger.acked - set(seqs) == set(), f"{when}: acknowledged records lost"
    assert set(seqs) - ledger.acked - ledger.uncertain == set(), f"{when}: records nobody sent"
    for r in snap.records:
        assert (r.state == "scored") == (r.model_version_id is not None), f"{when}: {r}"
        assert r.state in ("pending", "scored"), f"{when}: {r}"
    keys = Counter((o.record_id, o.model_version_id) for o in snap.outliers)
    assert {k: n for k, n in keys.items() if n > 1} == {}, f"{when}: a record flagged twice by one model"
    flagged_rows = Counter(o.record_id for o in snap.outliers)
    assert {k: n for k, n in flagged_rows.items() if n > 1} == {}, f"{when}: a record scored twice"
    assert set(flagged_rows) == {r.id for r in snap.records if r.is_outlier}, f"{when}: outliers and flags differ"
    assert [m.status for m in snap.models].count("active") <= 1, f"{when}: {snap.models}"
    # a model version exists only through a run that finished successfully and names it
    successes = Counter(r.model_version_id for r in snap.runs if r.result == "success")
    assert successes == Counter(m.id for m in snap.models), f"{when}: models {snap.models}, runs {snap.runs}"
    assert all(r.model_version_id is None for r in snap.runs if r.result != "success"), f"{when}: {snap.runs}"
    assert len(snap.running) <= 1, f"{when}: {snap.runs}"


def check_active_loads(engine: sa.Engine, when: str) -> int | None:
    with engine.connect() as conn:
        rows = list(conn.execute(sa.text(
            "SELECT version, weights, meta FROM model_versions WHERE detector = 'web' AND status = 'active'")))
    assert len(rows) <= 1, when
    if not rows:
        return None
    model = FittedModel.from_artifact(bytes(rows[0].weights), _json(rows[0].meta))
    assert model.threshold.value > 0, when
    version: int = rows[0].version
    return version


def check_restart(before: Snapshot, after: Snapshot, when: str) -> None:
    """The restart marked the run the kill interrupted as failed; that run changed no model."""
    runs = {r.id: r for r in after.runs}
    for run_id in before.running:
        assert runs[run_id].result == "failed", f"{when}: {runs[run_id]}"
        assert "interrupted" in (runs[run_id].message or ""), f"{when}: {runs[run_id]}"
        assert runs[run_id].model_version_id is None, when
    if after.active != before.active:        # only a run of the new process may have changed it since
        [run] = [r for r in after.runs if r.model_version_id == after.active]
        assert run.result == "success" and run.id not in {r.id for r in before.runs}, f"{when}: {after.runs}"


def logged_scored(log: Path) -> int:
    """Records a daemon's log says it scored (one line per score pass, written after its last commit)."""
    total = 0
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"scored"' in line:
            with contextlib.suppress(ValueError):          # the line the kill cut short
                event = json.loads(line)
                if event.get("logger") == "detector.scoring" and event.get("msg") == "scored":
                    total += int(event["records"])
    return total


@contextmanager
def store_url(backend: str, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'vigil.db'}"
        return
    with fresh_database() as url:
        yield url


@dataclass
class Tally:
    kills: int = 0
    ingest: int = 0             # a POST was in flight
    training: int = 0           # a training run was left 'running'
    first_training: int = 0     # ... the first model's
    scoring: int = 0            # inside a score pass: batches committed that the pass did not log yet
    no_model: int = 0           # no model yet at the kill
    records: int = 0
    acked: int = 0
    uncertain_stored: int = 0
    starts: list[float] = field(default_factory=list)


def run_store(backend: str, directory: Path, store_no: int, tally: Tally) -> None:
    directory.mkdir(parents=True)
    with store_url(backend, directory) as url:
        daemon = crash_daemon(directory, url)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        ledger = Ledger()
        poster: Poster | None = None
        try:
            before: Snapshot | None = None
            for k in range(KILLS_PER_STORE):
                trial = store_no * KILLS_PER_STORE + k
                when = f"{backend} store {store_no} trial {trial}"
                tally.starts.append(daemon.start(timeout=60))
                scored_at_start = 0 if before is None else before.scored
                if before is not None:
                    check_restart(before, snapshot(engine), f"{when}, after the restart")
                poster = Poster(daemon, ledger)
                poster.start()
                time.sleep(random.Random(trial).uniform(*DELAY))
                in_flight = poster.in_flight
                daemon.kill()
                poster.stop()
                poster.join(20)
                assert not poster.is_alive(), f"{when}: the client still waits"
                assert ledger.errors == [], f"{when}: {ledger.errors}"

                before = snapshot(engine)
                check_store(before, ledger, f"{when}, after the kill")
                check_active_loads(engine, f"{when}, after the kill")
                tally.kills += 1
                tally.ingest += in_flight
                if before.running:
                    tally.training += 1
                    tally.first_training += before.active is None
                elif before.active is None:
                    tally.no_model += 1
                # this start scored what the store holds beyond the last snapshot; its log may say less
                # (a pass logs after its last batch), never more
                logged = logged_scored(daemon.log)
                assert logged <= before.scored - scored_at_start, f"{when}: log says {logged} scored"
                tally.scoring += logged < before.scored - scored_at_start

            # the last restart: scoring resumes, a first model trains if none survived, nothing stays pending
            assert before is not None
            when = f"{backend} store {store_no}, last restart"
            tally.starts.append(daemon.start(timeout=60))
            check_restart(before, snapshot(engine), when)

            def settled() -> bool:
                status = daemon.status()
                return status["model"] is not None and status["records"]["pending"] == 0

            daemon.wait_for(settled, 90, f"{when}: every record scored")
            after = snapshot(engine)
            check_store(after, ledger, when)
            assert after.pending == 0 and all(r.model_version_id is not None for r in after.records), when
            assert daemon.metric("vigil_records_scored_total", detector="web") == before.pending, when
            version = check_active_loads(engine, when)
            # training runs every 3 s: a newer version may have become active since the store was read
            assert version is not None and daemon.status()["model"]["version"] >= version, when
            assert daemon.terminate() == 0, daemon.tail()
            stored = {r.seq for r in after.records}
            tally.records += len(stored)
            tally.acked += len(ledger.acked)
            tally.uncertain_stored += len(stored & ledger.uncertain)
        finally:
            if poster is not None:
                poster.stop()
            daemon.close()
            engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_at_random_moments_loses_nothing_and_repeats_nothing(backend: str, tmp_path: Path) -> None:
    if backend == "postgresql":
        require_postgres()
    began = time.monotonic()
    tally = Tally()
    for store_no in range(STORES):
        run_store(backend, tmp_path / f"store-{store_no}", store_no, tally)
    assert tally.kills == STORES * KILLS_PER_STORE
    assert tally.training > 0, "no kill landed during training"
    starts = sorted(tally.starts)
    print(f"\ncrash ({backend}): {tally.kills} kills in {time.monotonic() - began:.0f} s; "
          f"{tally.records} records stored ({tally.acked} acknowledged, {tally.uncertain_stored} stored "
          f"without an answer); kills with a POST in flight {tally.ingest}, during training {tally.training} "
          f"(first model {tally.first_training}), inside a score pass {tally.scoring}, before any model "
          f"{tally.no_model}; daemon start median {starts[len(starts) // 2]:.2f} s, max {starts[-1]:.2f} s")


def test_kill_between_saving_a_model_and_finishing_its_run(tmp_path: Path) -> None:
    """The narrowest moment of a training run, made wide: the test holds a lock on the run's row, so the
    daemon blocks on its next write to that row at the end of training; SIGKILL it there. The model of a
    run that the restart marks failed must not be active (nor exist)."""
    require_postgres()
    with fresh_database() as url:
        daemon = crash_daemon(tmp_path, url)
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        ledger = Ledger()
        try:
            daemon.start()
            batch = [next(ledger.seqs) for _ in range(300)]
            assert daemon.post([seq_record(s) for s in batch]).status_code == 200
            ledger.acked.update(batch)
            deadline = time.monotonic() + 60
            with engine.connect() as holder:
                while True:                 # lock a run while it trains (a run may end before we get there)
                    assert time.monotonic() < deadline, f"no training run could be caught:\n{daemon.tail()}"
                    locked = holder.execute(sa.text(
                        "SELECT id FROM training_runs WHERE result = 'running' FOR UPDATE")).scalar()
                    if locked is not None:
                        break
                    holder.rollback()
                    time.sleep(0.01)

                def blocked() -> bool:       # the daemon waits for our lock: it is writing the run's end
                    with engine.connect() as conn:
                        return bool(conn.execute(sa.text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock'")).scalar())

                daemon.wait_for(blocked, 30, "the daemon to write the end of the locked training run")
                daemon.kill()
                holder.rollback()
            before = snapshot(engine)
            assert before.running == [locked]
            daemon.start()
            after = snapshot(engine)
            [run] = [r for r in after.runs if r.id == locked]
            assert run.result == "failed"
            check_restart(before, after, "after the restart")
            check_store(after, ledger, "after the restart")
            assert daemon.terminate() == 0
        finally:
            daemon.close()
            engine.dispose()
