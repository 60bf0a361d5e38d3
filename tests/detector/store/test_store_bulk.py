"""The store's batched hot paths (driver executemany / COPY / array updates) on SQLite and PostgreSQL:
rows they write are the rows the ORM writes, and their failures surface as the ORM's would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from detector.errors import StorageError
from detector.records import ValidRecord
from detector.store.repository import Repository
from detector.store.tables import OutlierRow, RecordRow
from detector.store.types import IngestScores, PendingRecord, ScoredRecord

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


FIELDS = {"load": 0.5, "region": "eu", "healthy": None, "note": "caf\u00e9 \u2603", "count": 3}


def test_inserted_rows_equal_the_orms(repo: Repository, sessions: sessionmaker[Session], engine: Engine) -> None:
    """A record written by the batch insert and one written through the ORM store the same values, in the
    same representation (SQLite compares times as text, so the format must match to the character)."""
    paris = timezone(timedelta(hours=1))
    ts = datetime(2025, 3, 3, 13, 0, 0, 5, tzinfo=paris)          # 12:00:00.000005 UTC
    repo.add_batch("web", "http", [ValidRecord(ts, "web-1", FIELDS)], [])
    with sessions.begin() as session:
        session.execute(insert(RecordRow), [{
            "detector": "web", "ts": ts, "key": "web-1", "fields": FIELDS, "source": "http",
            "ingested_at": T0, "state": "pending", "is_outlier": False}])
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT ts, key, fields, source, state, is_outlier FROM records ORDER BY id")).all()
    assert raw[0] == raw[1]
    with sessions() as session:
        rows = session.scalars(select(RecordRow).order_by(RecordRow.id)).all()
        first, second = rows
        assert (first.ts, first.key, first.fields, first.state, first.is_outlier, first.score) == (
            second.ts, second.key, second.fields, second.state, second.is_outlier, second.score)
        assert first.ts == datetime(2025, 3, 3, 12, 0, 0, 5, tzinfo=UTC) and first.ts.tzinfo == UTC
        assert first.ingested_at.tzinfo == UTC
        # range queries through the ORM see batch-inserted rows exactly at their bounds
        assert session.scalar(select(RecordRow.id).where(RecordRow.ts >= first.ts, RecordRow.ts <= first.ts,
                                                         RecordRow.id == first.id)) == first.id


def test_claim_reads_back_what_was_inserted(repo: Repository) -> None:
    records = [ValidRecord(T0 + timedelta(seconds=i), None if i % 2 else f"k{i}", {**FIELDS, "load": i / 3})
               for i in range(7)]
    repo.add_batch("web", "http", records, [])
    version = repo.save_model("web", b"w", {}, 1.0, 1, None, None).id
    seen: list[PendingRecord] = []

    def scorer(pending: list[PendingRecord]) -> list[ScoredRecord]:
        seen.extend(pending)
        return [ScoredRecord(p.id, 0.1) for p in pending]

    repo.score_pending("web", 100, version, 1.0, scorer)
    assert [(p.ts, p.key, p.fields) for p in seen] == [(r.ts, r.key, r.fields) for r in records]
    assert all(p.ts.tzinfo == UTC for p in seen)


def test_scores_flags_and_notes_are_stored(repo: Repository, sessions: sessionmaker[Session]) -> None:
    repo.add_batch("web", "http", [ValidRecord(T0 + timedelta(seconds=i), "k", {"load": 1.0}) for i in range(4)], [])
    version = repo.save_model("web", b"w", {}, 1.0, 1, None, None).id
    note = {"unseen_category": ["region"], "out_of_range": []}
    explanation = {"contributions": [], "expected": {"load": 0.0}}

    def scorer(pending: list[PendingRecord]) -> list[ScoredRecord]:
        a, b, c, d = pending
        return [ScoredRecord(a.id, 0.25), ScoredRecord(b.id, float("inf"), explanation),
                ScoredRecord(c.id, 0.5, None, note), ScoredRecord(d.id, 7.0, explanation, note)]

    repo.score_pending("web", 10, version, 1.0, scorer)
    with sessions() as session:
        rows = session.scalars(select(RecordRow).order_by(RecordRow.id)).all()
    assert [(r.state, r.score, r.is_outlier, r.ood, r.model_version_id) for r in rows] == [
        ("scored", 0.25, False, None, version), ("scored", float("inf"), True, None, version),
        ("scored", 0.5, False, note, version), ("scored", 7.0, True, note, version)]
    assert len({r.scored_at for r in rows}) == 1 and rows[0].scored_at is not None
    assert rows[0].scored_at.tzinfo == UTC


def test_a_time_the_store_cannot_take_is_a_statement_error(repo: Repository) -> None:
    """Naive or overflowing times fail the whole batch as the ORM's type would (the API maps this to 422)."""
    naive = ValidRecord(datetime(2025, 3, 3), None, {"load": 1.0})
    with pytest.raises(StorageError, match="naive datetime") as caught:
        repo.add_batch("web", "http", [ValidRecord(T0, None, {"load": 1.0}), naive], [])
    assert type(caught.value.cause).__name__ == "StatementError"
    overflow = ValidRecord(datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-2))), None, {"load": 1.0})
    with pytest.raises(StorageError):
        repo.add_batch("web", "http", [overflow], [])
    assert repo.counts() == {}


def test_a_value_the_database_refuses_fails_the_batch(repo: Repository, engine: Engine) -> None:
    """A key longer than the column (validation stops these before): nothing of the batch is stored, and
    the error is the one the ORM raises (a DataError, which the API answers with 422)."""
    records = [ValidRecord(T0, "ok", {"load": 1.0}), ValidRecord(T0, "k" * 300, {"load": 1.0})]
    if engine.dialect.name == "sqlite":      # SQLite does not enforce VARCHAR lengths
        repo.add_batch("web", "http", records, [])
        assert repo.counts()["web"].pending == 2
        return
    with pytest.raises(StorageError) as caught:
        repo.add_batch("web", "http", records, [])
    assert isinstance(caught.value.cause, DataError)
    assert repo.counts() == {}
    repo.add_batch("web", "http", records[:1], [])      # the connection is usable afterwards
    assert repo.counts()["web"].pending == 1


def _scored_batch(version: int) -> tuple[list[ValidRecord], IngestScores]:
    records = [ValidRecord(T0 + timedelta(seconds=i), f"k{i % 2}", {**FIELDS, "load": i / 3}) for i in range(6)]
    note = {"unseen_category": ["region"], "out_of_range": []}
    explanation = {"contributions": [{"feature": "load", "contribution": 5.0}], "expected": {"load": 0.25}}
    # flagged rows first, in the middle and last: the SQLite path inserts the runs between them separately
    scores = IngestScores(version, 1.0, [3.0, 0.1, float("inf"), 0.2, 0.3, 9.0],
                          {0: explanation, 2: explanation, 5: explanation}, {2: note, 3: note}, {4: "confirmation"})
    return records, scores


def test_records_scored_on_ingest_are_stored_scored_with_their_outliers(
        repo: Repository, sessions: sessionmaker[Session]) -> None:
    version = repo.save_model("web", b"w", {}, 1.0, 1, None, None).id
    repo.add_batch("web", "http", [ValidRecord(T0, "before", {"load": 0.0})], [])     # a pending one before
    records, scores = _scored_batch(version)
    repo.add_batch("web", "http", records, [], scored=scores)
    with sessions() as session:
        rows = session.scalars(select(RecordRow).order_by(RecordRow.id)).all()
        outliers = session.scalars(select(OutlierRow).order_by(OutlierRow.id)).all()
    assert rows[0].state == "pending" and rows[0].score is None
    stored = rows[1:]
    assert [(r.ts, r.key, r.fields) for r in stored] == [(r.ts, r.key, r.fields) for r in records]   # batch order
    assert [(r.state, r.score, r.is_outlier, r.model_version_id, r.ood) for r in stored] == [
        ("scored", 3.0, True, version, None), ("scored", 0.1, False, version, None),
        ("scored", float("inf"), True, version, scores.ood[2]), ("scored", 0.2, False, version, scores.ood[3]),
        ("scored", 0.3, False, version, None), ("scored", 9.0, True, version, None)]
    assert all(r.scored_at is not None and r.scored_at.tzinfo == UTC for r in stored)
    assert [o.record_id for o in outliers] == [stored[0].id, stored[2].id, stored[5].id]
    assert [(o.ts, o.key, o.fields, o.score, o.threshold, o.model_version_id) for o in outliers] == [
        (records[i].ts, records[i].key, records[i].fields, scores.scores[i], 1.0, version) for i in (0, 2, 5)]
    assert [(o.contributions, o.expected, o.ood, o.review_state) for o in outliers] == [
        (scores.outliers[i]["contributions"], scores.outliers[i]["expected"], scores.ood.get(i), "unreviewed")
        for i in (0, 2, 5)]
    counts = repo.counts()["web"]
    assert (counts.pending, counts.scored, counts.outliers) == (1, 6, 3)
    # nothing scored on ingest is claimed again
    assert repo.score_pending("web", 100, version, 1.0, lambda p: [ScoredRecord(r.id, 0.0) for r in p]) == [
        ScoredRecord(rows[0].id, 0.0)]


def test_a_scored_batch_without_outliers_and_one_that_fails_store_nothing_twice(
        repo: Repository, engine: Engine) -> None:
    version = repo.save_model("web", b"w", {}, 1.0, 1, None, None).id
    records, _ = _scored_batch(version)
    repo.add_batch("web", "http", records, [], scored=IngestScores(version, 1.0, [0.1] * 6, {}, {}, {}))
    assert (repo.counts()["web"].scored, repo.counts()["web"].outliers) == (6, 0)
    with pytest.raises(ValueError, match="5 scores for 6 accepted records"):
        repo.add_batch("web", "http", records, [], scored=IngestScores(version, 1.0, [0.1] * 5, {}, {}, {}))
    naive = [*records[:3], ValidRecord(datetime(2025, 3, 3), None, {"load": 1.0})]
    _, flagged = _scored_batch(version)
    with pytest.raises(StorageError):
        repo.add_batch("web", "http", naive, [], scored=IngestScores(version, 1.0, [3.0] * 4, {
            0: flagged.outliers[0]}, {}, {}))
    assert (repo.counts()["web"].scored, repo.counts()["web"].outliers) == (6, 0)    # the batch rolled back whole


def test_a_driver_error_in_the_scored_insert_is_the_orms_and_rolls_the_batch_back(repo: Repository) -> None:
    """The scored insert runs on the driver's own cursor: a constraint it breaks (here a model version that
    does not exist) still surfaces as SQLAlchemy's IntegrityError inside a StorageError, with nothing stored,
    and the store takes the next batch."""
    version = repo.save_model("web", b"w", {}, 1.0, 1, None, None).id
    records, scores = _scored_batch(version)
    missing = IngestScores(version + 1000, 1.0, scores.scores, scores.outliers, scores.ood, scores.suppressed)
    with pytest.raises(StorageError) as caught:
        repo.add_batch("web", "http", records, [], scored=missing)
    assert isinstance(caught.value.cause, IntegrityError)
    assert repo.counts() == {}
    repo.add_batch("web", "http", records, [], scored=scores)
    assert (repo.counts()["web"].scored, repo.counts()["web"].outliers) == (6, 3)


def test_large_batches_are_stored_whole_and_in_order(repo: Repository, sessions: sessionmaker[Session]) -> None:
    """Batches longer than one multi-row statement (SQLite) and runs of every length between flagged rows:
    each record once, in batch order, each outlier on its own record."""
    version = repo.save_model("web", b"w", {}, 1.0, 1, None, None).id
    pending = [ValidRecord(T0 + timedelta(seconds=i), f"p{i}", {"load": i}) for i in range(1300)]
    repo.add_batch("web", "http", pending, [])
    records = [ValidRecord(T0 + timedelta(hours=1, seconds=i), f"s{i}", {"load": -i}) for i in range(1301)]
    flagged = (0, 1, 3, 700, 1299, 1300)
    explanation = {"contributions": [{"feature": "load", "contribution": 1.0}], "expected": {"load": 0.0}}
    scores = [float(i) / 1000 for i in range(len(records))]
    repo.add_batch("web", "http", records, [], scored=IngestScores(
        version, 0.5, scores, {i: explanation for i in flagged}, {}, {}))
    with sessions() as session:
        rows = session.scalars(select(RecordRow).order_by(RecordRow.id)).all()
        outliers = session.scalars(select(OutlierRow).order_by(OutlierRow.id)).all()
    assert [(r.key, r.fields["load"], r.state) for r in rows] == (
        [(f"p{i}", i, "pending") for i in range(1300)] + [(f"s{i}", -i, "scored") for i in range(1301)])
    assert [r.score for r in rows[1300:]] == scores
    assert [r.is_outlier for r in rows[1300:]] == [i in flagged for i in range(1301)]
    assert [(o.record_id, o.key) for o in outliers] == [(rows[1300 + i].id, f"s{i}") for i in flagged]


def test_multi_row_inserts_keep_within_the_parameter_limit() -> None:
    """On an SQLite that takes few parameters per statement, the rows go in smaller statements, in order."""
    import sqlite3

    from detector.store.bulk import _sqlite_insert

    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (a INTEGER, b TEXT, c REAL)")
    connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 10)         # 3 rows of 3 values at most
    cursor = connection.cursor()
    rows = [(i, f"r{i}", i / 7) for i in range(1030)]
    _sqlite_insert(cursor, "INSERT INTO t (a, b, c) VALUES (?, ?, ?)", rows)
    _sqlite_insert(cursor, "INSERT INTO t (a, b, c) VALUES (?, ?, ?)", [])
    assert connection.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall() == rows
    connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32766)
    _sqlite_insert(cursor, "INSERT INTO t (a, b, c) VALUES (?, ?, ?)", rows)
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (2060,)
