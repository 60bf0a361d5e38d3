"""The store on a real SQLite file and a real PostgreSQL database: schema, transactions, scoring once, retention."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from detector.errors import StorageError
from detector.records import Rejection, ValidRecord
from detector.store.db import current_revision, head_revision, open_engine, upgrade
from detector.store.repository import Repository
from detector.store.tables import Base, OutlierRow, RecordRow, RejectRow, UTCDateTime
from detector.store.types import PendingRecord, ScoredRecord

T0 = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)


def rec(minutes: float, load: float = 1.0, key: str | None = "web-1") -> ValidRecord:
    return ValidRecord(ts=T0 + timedelta(minutes=minutes), key=key, fields={"load": load, "region": "eu"})


def add(repo: Repository, n: int, detector: str = "web", start: float = 0) -> None:
    repo.add_batch(detector, "http", [rec(start + i, load=float(i)) for i in range(n)], [])


def model(repo: Repository, detector: str = "web", threshold: float = 1.0) -> int:
    return repo.save_model(detector, b"weights", {"m": 1}, threshold, 10, T0, T0).id


def flag_every_third(pending: list[PendingRecord]) -> list[ScoredRecord]:
    out = []
    for p in pending:
        if p.id % 3 == 0:
            outlier = {"contributions": [{"feature": "load", "share": 1.0}], "expected": {"load": 0.0}}
            out.append(ScoredRecord(p.id, 5.0 + p.id, outlier))
        else:
            out.append(ScoredRecord(p.id, 0.1))
    return out


def states(sessions: sessionmaker[Session]) -> dict[int, tuple[str, bool]]:
    with sessions() as s:
        return {r.id: (r.state, r.is_outlier) for r in s.scalars(select(RecordRow))}


# -- schema ----------------------------------------------------------------------------------------

def test_migration_matches_table_metadata(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, Base.metadata) == []


def test_metadata_comparison_detects_a_difference(engine: Engine) -> None:
    """The comparison above can fail: a column missing from the migration is reported."""
    changed = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["records"].append_column(sa.Column("extra", sa.Integer(), nullable=True))
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), changed)
    assert [d[0] for d in diffs] == ["add_column"]
    assert diffs[0][3].name == "extra"


def test_upgrade_is_idempotent(engine: Engine) -> None:
    assert head_revision()
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        tables_before = set(sa.inspect(conn).get_table_names())
    assert upgrade(engine) == head_revision()
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) == tables_before
        assert conn.execute(text("select count(*) from alembic_version")).scalar() == 1
    assert tables_before >= set(Base.metadata.tables)


def test_fresh_file_is_at_no_revision(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'deep' / 'dir' / 'new.db'}")
    try:
        assert current_revision(engine) is None
        assert upgrade(engine) == head_revision()
        assert (tmp_path / "deep" / "dir" / "new.db").is_file()
    finally:
        engine.dispose()


def test_sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


# -- ingestion -------------------------------------------------------------------------------------

def test_add_batch_stores_records_rejects_and_watermark(repo: Repository, sessions: sessionmaker[Session]) -> None:
    rejection = Rejection(1, "load", "wrong_type", "record 1: field 'load': expected a number", '{"load": "x"}')
    repo.add_batch("web", "file", [rec(0), rec(1)], [rejection], origin="a.csv", watermark=("file:abc", "a.csv"))
    assert repo.watermark("web", "file:abc") == "a.csv"
    assert repo.watermark("other", "file:abc") is None
    counts = repo.counts()["web"]
    assert (counts.pending, counts.scored, counts.rejected, counts.outliers) == (2, 0, 1, 0)
    [reject] = repo.list_rejects("web")
    assert reject["origin"] == "a.csv"
    assert (reject["index"], reject["field"], reject["reason"]) == (1, "load", "wrong_type")
    with sessions() as s:
        rows = s.scalars(select(RecordRow).order_by(RecordRow.id)).all()
        assert [r.source for r in rows] == ["file", "file"]
        assert rows[0].fields == {"load": 1.0, "region": "eu"}
        assert s.scalars(select(RejectRow.raw)).one() == '{"load": "x"}'
    repo.add_batch("web", "file", [], [], watermark=("file:abc", "b.csv"))
    assert repo.watermark("web", "file:abc") == "b.csv"


def test_add_batch_is_all_or_nothing(repo: Repository, engine: Engine) -> None:
    add(repo, 2)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE watermarks"))
    rejection = Rejection(0, None, "not_an_object", "record 0: expected a JSON object")
    with pytest.raises(StorageError, match="database ingest failed"):
        repo.add_batch("web", "file", [rec(10), rec(11)], [rejection], watermark=("file:x", "x.csv"))
    counts = repo.counts()["web"]
    assert (counts.pending, counts.rejected) == (2, 0)


def test_naive_datetime_is_refused(repo: Repository) -> None:
    naive = ValidRecord(ts=datetime(2025, 3, 3), key=None, fields={"load": 1.0})
    with pytest.raises(StorageError, match="naive datetime"):
        repo.add_batch("web", "http", [rec(0), naive], [])
    assert repo.counts() == {}
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2025, 3, 3), sa.create_engine("sqlite://").dialect)


def test_timestamps_come_back_utc_aware(repo: Repository) -> None:
    paris = timezone(timedelta(hours=1))
    repo.add_batch("web", "http", [ValidRecord(datetime(2025, 3, 3, 13, 0, tzinfo=paris), "k", {"load": 1.0})], [])
    [record] = repo.training_window("web", T0, 10)
    assert record.ts == datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    assert record.ts.tzinfo == UTC
    latest = repo.latest_ts("web")
    assert latest == record.ts and latest is not None and latest.tzinfo == UTC
    saved = repo.save_model("web", b"w", {}, 1.0, 1, record.ts, record.ts)
    assert saved.created_at.tzinfo == UTC
    active = repo.active_model("web")
    assert active is not None
    assert active.window_start == record.ts and active.window_start is not None
    assert active.window_start.tzinfo == UTC
    assert active.activated_at is not None and active.activated_at.tzinfo == UTC


# -- scoring ---------------------------------------------------------------------------------------

def test_score_pending_scores_each_record_once(repo: Repository, sessions: sessionmaker[Session]) -> None:
    add(repo, 10)
    version_id = model(repo, threshold=2.5)
    first = repo.score_pending("web", 4, version_id, 2.5, flag_every_third)
    second = repo.score_pending("web", 4, version_id, 2.5, flag_every_third)
    third = repo.score_pending("web", 4, version_id, 2.5, flag_every_third)
    assert repo.score_pending("web", 4, version_id, 2.5, flag_every_third) == []
    ids = [s.id for batch in (first, second, third) for s in batch]
    assert [len(first), len(second), len(third)] == [4, 4, 2]
    assert sorted(ids) == list(range(1, 11)) and len(set(ids)) == 10
    assert [s.id for s in first] == [1, 2, 3, 4], "oldest pending first"
    with sessions() as s:
        rows = s.scalars(select(RecordRow).order_by(RecordRow.id)).all()
        assert {r.state for r in rows} == {"scored"}
        assert {r.model_version_id for r in rows} == {version_id}
        assert all(r.scored_at is not None and r.scored_at.tzinfo == UTC for r in rows)
        assert [r.is_outlier for r in rows] == [r.id % 3 == 0 for r in rows]
        assert [r.score for r in rows] == [5.0 + r.id if r.id % 3 == 0 else 0.1 for r in rows]
        outliers = s.scalars(select(OutlierRow).order_by(OutlierRow.id)).all()
    assert [o.record_id for o in outliers] == [3, 6, 9]
    o = outliers[0]
    assert (o.detector, o.key, o.score, o.threshold, o.model_version_id) == ("web", "web-1", 8.0, 2.5, version_id)
    assert o.ts == T0 + timedelta(minutes=2)
    assert o.fields == {"load": 2.0, "region": "eu"}
    assert o.contributions == [{"feature": "load", "share": 1.0}]
    assert o.expected == {"load": 0.0}
    assert o.review_state == "unreviewed"
    [view] = [v for v in repo.list_outliers("web") if v.record_id == 3]
    assert view.model_version == 1
    counts = repo.counts()["web"]
    assert (counts.pending, counts.scored, counts.outliers) == (0, 10, 3)


def test_score_pending_only_claims_its_detector(repo: Repository) -> None:
    add(repo, 3, detector="web")
    add(repo, 2, detector="db")
    scored = repo.score_pending("db", 100, model(repo, "db"), 1.0, flag_every_third)
    assert len(scored) == 2
    assert repo.counts()["web"].pending == 3


def test_scorer_failure_leaves_records_pending(repo: Repository, sessions: sessionmaker[Session]) -> None:
    add(repo, 5)
    version_id = model(repo)

    def scorer(pending: list[PendingRecord]) -> list[ScoredRecord]:
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="model exploded"):
        repo.score_pending("web", 10, version_id, 1.0, scorer)
    assert set(states(sessions).values()) == {("pending", False)}
    assert repo.list_outliers() == []
    assert len(repo.score_pending("web", 10, version_id, 1.0, flag_every_third)) == 5


def test_failed_write_rolls_back_scores(repo: Repository, sessions: sessionmaker[Session]) -> None:
    add(repo, 3)
    model(repo)
    missing_version = 999           # foreign keys are enforced: the score update itself fails
    with pytest.raises(StorageError, match="database score failed"):
        repo.score_pending("web", 10, missing_version, 1.0, flag_every_third)
    assert set(states(sessions).values()) == {("pending", False)}
    assert repo.list_outliers() == []


# -- training --------------------------------------------------------------------------------------

def test_training_window_excludes_outliers_and_keeps_newest(repo: Repository) -> None:
    add(repo, 12)                                   # ts T0+0..11 min, ids 1..12
    repo.score_pending("web", 100, model(repo), 1.0, flag_every_third)      # ids 3, 6, 9, 12 flagged
    window = repo.training_window("web", T0, 100)
    assert [r.id for r in window] == [1, 2, 4, 5, 7, 8, 10, 11]
    since = repo.training_window("web", T0 + timedelta(minutes=4), 100)
    assert [r.id for r in since] == [5, 7, 8, 10, 11]
    newest = repo.training_window("web", T0, 3)
    assert [r.id for r in newest] == [8, 10, 11], "the newest kept, oldest first"
    assert [r.ts for r in newest] == sorted(r.ts for r in newest)
    assert repo.count_window("web", T0) == 8
    assert repo.count_window("web", T0 + timedelta(minutes=4)) == 5
    assert repo.training_window("db", T0, 100) == []


def test_a_spread_training_window_samples_all_of_it_evenly(repo: Repository) -> None:
    add(repo, 100)                                  # ts T0+0..99 min, ids 1..100
    repo.score_pending("web", 1000, model(repo), 1.0, flag_every_third)     # ids 3, 6, ..., 99 flagged: 67 left
    everything = [r.id for r in repo.training_window("web", T0, 1000)]
    assert len(everything) == 67
    spread = repo.training_window("web", T0, 10, spread=True)
    assert len(spread) == 10
    ids = [r.id for r in spread]
    assert ids == sorted(ids) and set(ids) <= set(everything)
    # evenly over the whole window: the k-th of 10 is the ceil(67 (k + 1) / 10)-th trainable record
    assert ids == [everything[-(-67 * (k + 1) // 10) - 1] for k in range(10)]
    assert spread[0].ts < T0 + timedelta(minutes=15) and spread[-1].ts == T0 + timedelta(minutes=99)
    # no more records than the limit: all of them, as without spreading
    assert [r.id for r in repo.training_window("web", T0, 67, spread=True)] == everything
    assert [r.id for r in repo.training_window("web", T0, 5)] == everything[-5:]      # not spread: the newest


def test_training_window_orders_by_time_not_id(repo: Repository) -> None:
    repo.add_batch("web", "http", [rec(30, 1.0), rec(10, 2.0), rec(20, 3.0)], [])
    window = repo.training_window("web", T0, 2)
    assert [r.fields["load"] for r in window] == [3.0, 1.0]


def test_save_model_activates_and_retires(repo: Repository) -> None:
    assert repo.active_model("web") is None and repo.active_model_id("web") is None
    v1 = repo.save_model("web", b"one", {"n": 1}, 1.0, 100, T0, T0 + timedelta(hours=1))
    assert (v1.version, v1.status, v1.weights) == (1, "active", None)
    v2 = repo.save_model("web", b"two", {"n": 2}, 2.0, 200, T0, T0 + timedelta(hours=2))
    other = repo.save_model("db", b"db", {}, 3.0, 50, None, None)
    assert other.version == 1
    assert v2.version == 2
    active = repo.active_model("web")
    assert active is not None
    assert (active.id, active.version, active.weights, active.meta, active.threshold) == (
        v2.id, 2, b"two", {"n": 2, "weights_sha256": hashlib.sha256(b"two").hexdigest()}, 2.0)   # checksum added
    assert repo.active_model_id("web") == v2.id
    assert [(m.version, m.status) for m in repo.list_models("web")] == [(2, "active"), (1, "retired")]
    candidate = repo.save_model("web", b"three", {}, 3.0, 10, None, None, activate=False)
    assert (candidate.version, candidate.status, candidate.activated_at) == (3, "candidate", None)
    assert repo.active_model_id("web") == v2.id
    statuses = [m.status for m in repo.list_models("web")]
    assert statuses == ["candidate", "active", "retired"]
    assert [m.status for m in repo.list_models("db")] == ["active"]


def test_save_model_failure_keeps_previous_active(repo: Repository) -> None:
    v1 = repo.save_model("web", b"one", {}, 1.0, 100, None, None)
    # meta that is not JSON: SQLAlchemy wraps the error on SQLite, psycopg raises it while binding
    with pytest.raises((StorageError, TypeError)):
        repo.save_model("web", b"two", {"bad": object()}, 2.0, 100, None, None)
    assert repo.active_model_id("web") == v1.id
    assert [(m.version, m.status) for m in repo.list_models("web")] == [(1, "active")]


def test_training_runs(repo: Repository) -> None:
    finished = repo.start_training_run("web", "manual")
    running = repo.start_training_run("web", "schedule")
    other = repo.start_training_run("db", "first")
    version = repo.save_model("web", b"w", {}, 1.0, 10, None, None)
    repo.finish_training_run(finished, "success", "model version 1 active", n_records=10, duration_s=1.5,
                             train_loss=0.1, val_loss=0.2, model_version_id=version.id)
    assert repo.abandon_running_runs("web") == 1
    assert repo.abandon_running_runs("web") == 0
    assert repo.abandon_running_runs("db") == 1
    runs = {r.id: r for r in repo.list_training_runs("web")}
    assert (runs[finished].result, runs[finished].model_version, runs[finished].val_loss) == ("success", 1, 0.2)
    abandoned = runs[running]
    assert abandoned.result == "failed"
    assert abandoned.message == "interrupted: the daemon stopped"
    assert abandoned.finished_at is not None and abandoned.finished_at.tzinfo == UTC
    last = repo.last_training_run("db")
    assert last is not None and (last.id, last.result, last.trigger) == (other, "failed", "first")
    assert repo.last_training_run("none") is None


# -- retention -------------------------------------------------------------------------------------

def test_purge_keeps_pending_flagged_and_recent(repo: Repository, sessions: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=10), now - timedelta(hours=1)
    records = [ValidRecord(old, "a", {"i": i}) for i in range(6)] + [ValidRecord(recent, "b", {"i": i})
                                                                      for i in range(6, 8)]
    repo.add_batch("web", "http", records, [])
    version_id = model(repo)
    repo.add_batch("web", "http", [ValidRecord(old, "p", {"i": 8})], [])            # old but still pending

    def score(pending: list[PendingRecord]) -> list[ScoredRecord]:
        return [ScoredRecord(p.id, 9.0, {"contributions": [], "expected": {}}) if p.fields["i"] in (0, 6)
                else ScoredRecord(p.id, 0.1) for p in pending[:8]]

    repo.score_pending("web", 8, version_id, 1.0, score)
    repo.add_batch("web", "http", [], [Rejection(None, None, "malformed", "old"),
                                       Rejection(None, None, "malformed", "new")])
    with sessions.begin() as s:                      # old records also arrived long ago
        s.execute(update(RecordRow).where(RecordRow.ts == old).values(ingested_at=old))
        s.execute(update(RejectRow).where(RejectRow.message == "old").values(received_at=old))

    cutoff = now - timedelta(days=7)
    assert repo.purge(cutoff, cutoff) == (5, 1)
    with sessions() as s:
        left = sorted(r.fields["i"] for r in s.scalars(select(RecordRow)))
        messages = s.scalars(select(RejectRow.message)).all()
    # kept: 0 (old, flagged), 6 and 7 (recent), 8 (old, pending); gone: 1..5 (old, scored, normal)
    assert left == [0, 6, 7, 8]
    assert messages == ["new"]
    assert len(repo.list_outliers("web")) == 2
    assert repo.purge(cutoff, cutoff) == (0, 0)


def test_outlier_survives_its_record(repo: Repository, sessions: sessionmaker[Session]) -> None:
    add(repo, 3)
    repo.score_pending("web", 10, model(repo), 1.0, flag_every_third)
    with sessions.begin() as s:
        s.execute(sa.delete(RecordRow))
    [view] = repo.list_outliers("web")
    assert view.record_id is None
    assert view.fields == {"load": 2.0, "region": "eu"}


def test_list_outliers_filters(repo: Repository) -> None:
    add(repo, 6)
    add(repo, 6, detector="db", start=100)
    repo.score_pending("web", 100, model(repo), 1.0, flag_every_third)
    repo.score_pending("db", 100, model(repo, "db"), 1.0, flag_every_third)
    assert {o.detector for o in repo.list_outliers("web")} == {"web"}
    assert len(repo.list_outliers()) == 4
    assert len(repo.list_outliers(limit=1)) == 1
    assert [o.detector for o in repo.list_outliers(since=T0 + timedelta(minutes=50))] == ["db", "db"]
