"""Hardening of the store (issue 28): a locked SQLite store makes writes give up within the write timeout
instead of waiting for ever; commits are synced to disk; store files are private; text no store takes is refused
alike on both stores; a batch's idempotency key keeps the batch's outcome and ages out."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from detector.errors import StorageError, StoreBusyError, StoreRefusedValueError
from detector.records import Rejection, ValidRecord
from detector.store.db import open_repository
from detector.store.repository import Repository
from detector.store.session import write_deadline
from detector.store.types import BATCH_KEY_PREFIX, PendingRecord, ScoredRecord

T0 = datetime(2025, 3, 3, tzinfo=UTC)
# generous bounds that make a test fail where a write waits for the lock to go: they are not speed targets
BOUND_S = 15.0


def records(n: int, start: int = 0) -> list[ValidRecord]:
    return [ValidRecord(T0 + timedelta(minutes=start + i), "web-1", {"load": float(i)}) for i in range(n)]


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "vigil.db"


@pytest.fixture
def short(sqlite_path: Path) -> Iterator[Repository]:
    """A repository on a SQLite file whose writes wait for the store at most 1 s."""
    repo = open_repository(f"sqlite:///{sqlite_path}", write_timeout=1.0)
    yield repo
    repo.dispose()


@pytest.fixture
def locked(sqlite_path: Path, short: Repository) -> Iterator[sqlite3.Connection]:
    """Another connection (as another process would) holding the store's write lock: BEGIN EXCLUSIVE."""
    conn = sqlite3.connect(sqlite_path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


def _timed_write(repo: Repository) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        repo.add_batch("web", "http", records(3), [])
    except StorageError as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


# -- a locked SQLite store ---------------------------------------------------------------------------

def test_a_write_to_a_locked_store_gives_up_and_reads_go_on(short: Repository, locked: sqlite3.Connection) -> None:
    """A write gives up (StoreBusyError, nothing written) once the write timeout has passed; reads go on (WAL)."""
    error, seconds = _timed_write(short)
    assert isinstance(error, StoreBusyError), error
    assert seconds < BOUND_S
    assert short.counts() == {}                           # reads answer while the lock is held
    locked.execute("ROLLBACK")
    short.add_batch("web", "http", records(3), [])        # the store takes writes again
    assert short.counts()["web"].pending == 3


def test_writes_queued_behind_a_locked_store_each_give_up(short: Repository, locked: sqlite3.Connection) -> None:
    """Writes of several threads queue for one writer; each gives up within its own write timeout, not one
    timeout after another (the queue does not add up)."""
    results: list[tuple[BaseException | None, float]] = []
    threads = [threading.Thread(target=lambda: results.append(_timed_write(short))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8
    for error, seconds in results:
        assert isinstance(error, StoreBusyError), error
        assert seconds < BOUND_S


def test_a_write_past_its_deadline_gives_up_at_once(short: Repository) -> None:
    """`write_deadline` (an HTTP request that waited for a thread) shortens the wait: a deadline already past is
    a StoreBusyError before the store is touched, on a store that is free."""
    with write_deadline(time.monotonic() - 1), pytest.raises(StoreBusyError, match="no turn to write"):
        short.add_batch("web", "http", records(1), [])
    assert short.counts() == {}


def test_readiness_probe_sees_the_lock(short: Repository, locked: sqlite3.Connection) -> None:
    """`probe_write` takes the write lock and lets it go: it fails while another connection holds it (and keeps
    the failure in the store's state), and passes once it is free (clearing it)."""
    with pytest.raises(StoreBusyError):
        short.probe_write(0.5)
    assert short.state.failure is not None and short.state.failure.operation == "readiness probe"
    locked.execute("ROLLBACK")
    short.probe_write(0.5)
    assert short.state.failure is None
    short.add_batch("web", "http", records(1), [])        # the probe wrote nothing and left no lock
    assert short.counts()["web"].pending == 1


def test_readiness_probe_passes_on_a_working_store(repo: Repository) -> None:
    repo.probe_write(1.0)
    assert repo.state.failure is None


# -- durability ------------------------------------------------------------------------------------

def test_sqlite_commits_are_synced_to_disk_by_default(sqlite_path: Path, tmp_path: Path) -> None:
    """synchronous=FULL by default (a commit is on disk when the write returns, power loss included);
    `normal` is the choice of those who trade that for throughput."""
    default = open_repository(f"sqlite:///{sqlite_path}")
    faster = open_repository(f"sqlite:///{tmp_path / 'other.db'}", synchronous="normal")
    try:
        for repo, expected in ((default, 2), (faster, 1)):        # PRAGMA synchronous: 1 NORMAL, 2 FULL
            with repo._sessions() as session:
                assert session.execute(text("PRAGMA synchronous")).scalar() == expected
                assert session.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        default.dispose()
        faster.dispose()
    with pytest.raises(ValueError, match="synchronous must be one of"):
        open_repository(f"sqlite:///{tmp_path / 'third.db'}", synchronous="off")  # type: ignore[arg-type]


# -- permissions -----------------------------------------------------------------------------------

@pytest.fixture
def open_umask() -> Iterator[None]:
    """The umask of `make run` in a usual shell (022): files readable by everyone unless made otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_sqlite_store_files_and_folder_are_private(sqlite_path: Path, open_umask: None) -> None:
    """The state folder is created 0700 and the store 0600, and SQLite's -wal and -shm files take its mode."""
    repo = open_repository(f"sqlite:///{sqlite_path}")
    try:
        repo.add_batch("web", "http", records(2), [])
        files = [sqlite_path, sqlite_path.with_name("vigil.db-wal"), sqlite_path.with_name("vigil.db-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o600" for f in files}
        assert oct(sqlite_path.parent.stat().st_mode & 0o777) == "0o700"
    finally:
        repo.dispose()


def test_store_files_open_to_others_are_warned_about(sqlite_path: Path, open_umask: None,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A store file (or folder) made before, readable by other users, is logged as a warning, as the token is."""
    sqlite_path.parent.mkdir(mode=0o755)
    sqlite3.connect(sqlite_path).close()
    os.chmod(sqlite_path, 0o644)
    os.chmod(sqlite_path.parent, 0o755)
    with caplog.at_level(logging.WARNING, logger="detector.store.db"):
        open_repository(f"sqlite:///{sqlite_path}").dispose()
    messages = {(r.getMessage(), getattr(r, "path", None)) for r in caplog.records}
    assert ("store file is readable by other users; chmod 600 it", str(sqlite_path)) in messages
    assert ("store folder is open to other users; chmod o-rwx it", str(sqlite_path.parent)) in messages


# -- text no store takes ---------------------------------------------------------------------------

def _one_outlier(repo: Repository) -> int:
    repo.add_batch("web", "http", records(2), [])
    version = repo.save_model("web", b"weights", {"m": 1}, 1.0, 10, T0, T0).id

    def flag_all(pending: list[PendingRecord]) -> list[ScoredRecord]:
        outlier = {"contributions": [{"feature": "load", "share": 1.0}], "expected": {"load": 0.0}}
        return [ScoredRecord(p.id, 5.0, outlier) for p in pending]

    repo.score_pending("web", 10, version, 1.0, flag_all)
    return repo.list_outliers("web")[0].id


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_texts_no_store_takes_are_refused_alike(repo: Repository, bad: str) -> None:
    """A NUL (PostgreSQL refuses it, SQLite kept it) or a lone surrogate in a note, a reviewer or a maintenance
    reason: refused on both stores, naming the field, and nothing is stored."""
    outlier = _one_outlier(repo)
    repo.reviews.set_verdict([outlier], "confirmed", "first", "ops")
    for note, reviewer, field in ((bad, "ops", "note"), ("fine", bad, "reviewer")):
        with pytest.raises(StoreRefusedValueError, match=f"{field}: text contains"):
            repo.reviews.set_verdict([outlier], "dismissed", note, reviewer)
    detail = repo.reviews.detail(outlier)
    assert detail is not None
    assert (detail.outlier.review_state, detail.review_note, detail.reviewer) == ("confirmed", "first", "ops")
    with pytest.raises(StoreRefusedValueError, match="reason: text contains"):
        repo.reviews.add_window("web", T0, T0 + timedelta(hours=1), bad)
    assert repo.reviews.windows("web") == []
    assert repo.state.failure is None                     # a refused value is not a store that cannot write


# -- idempotency keys ------------------------------------------------------------------------------

def test_a_keyed_batch_keeps_its_outcome_and_old_keys_are_purged(repo: Repository) -> None:
    """A watermark named BATCH_KEY_PREFIX + key is stored with its batch, holding the batch's outcome; purge
    forgets keys stored before its cut-off (the batch stays), and keeps other watermarks."""
    rejection = Rejection(1, "load", "wrong_type", "record 1: field 'load': expected a number", '{"load": "x"}')
    repo.add_batch("web", "http", records(2), [rejection], watermark=(BATCH_KEY_PREFIX + "k1", "request"))
    repo.add_batch("web", "file", records(1, 10), [], watermark=("file:abc", "a.csv"))
    stored = repo.watermark("web", BATCH_KEY_PREFIX + "k1")
    assert stored is not None
    assert json.loads(stored) == {"request": "request", "accepted": 2, "rejected": [rejection.to_dict()]}
    repo.purge(T0 - timedelta(days=1), T0 - timedelta(days=1), batch_keys_before=datetime.now(UTC) - timedelta(hours=1))
    assert repo.watermark("web", BATCH_KEY_PREFIX + "k1") is not None     # younger than the cut-off
    repo.purge(T0 - timedelta(days=1), T0 - timedelta(days=1), batch_keys_before=datetime.now(UTC) + timedelta(hours=1))
    assert repo.watermark("web", BATCH_KEY_PREFIX + "k1") is None
    assert repo.watermark("web", "file:abc") == "a.csv"
    assert repo.counts()["web"].pending == 3
