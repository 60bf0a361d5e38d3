"""Tests for the spool-folder file source: each file stored once, then moved to done/ or failed/."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from detector.config import Config, FileSourceConfig, load_config
from detector.daemon import Runtime
from detector.sources.files import FileSource, read_records
from tests.detector.conftest import HTTP_DETECTOR

FILE_DETECTOR = HTTP_DETECTOR.replace('source = { type = "http" }',
                                      'source = { type = "file", path = "spool", settle = 0 }')
T0 = datetime(2025, 3, 3, tzinfo=UTC)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


@pytest.fixture
def config(write_config: Callable[[str], Path], spool: Path) -> Config:
    """Overrides conftest's `config`: the `web` detector reads the spool folder (so `runtime` does too)."""
    return load_config(write_config(FILE_DETECTOR))


@pytest.fixture
def source(runtime: Runtime) -> FileSource:
    [file_source] = runtime.sources
    assert isinstance(file_source, FileSource)
    return file_source


def frame(n: int, seed: int = 0, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    load = rng.uniform(10, 100, n)
    return pd.DataFrame({
        "ts": [(T0 + timedelta(minutes=start + i)).isoformat() for i in range(n)],
        "host": [f"web-{i % 3}" for i in range(n)],
        "load": load,
        "cpu": 0.8 * load + rng.normal(0, 2, n),
        "latency": 20 + 0.1 * load + rng.normal(0, 1, n),
        "region": rng.choice(["eu", "us"], n),
    })


def write_ndjson(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def stored(runtime: Runtime) -> int:
    counts = runtime.vigil.repo.counts().get("web")
    return 0 if counts is None else counts.pending + counts.scored


def rejected_metric(runtime: Runtime, reason: str) -> float:
    return runtime.registry.get_sample_value("vigil_records_rejected_total",
                                             {"detector": "web", "reason": reason}) or 0.0


def test_source_is_built_from_config(source: FileSource, spool: Path) -> None:
    assert source.detector == "web"
    assert source.poll_interval_s == 5.0


def test_csv_parquet_ndjson_each_ingested_once(runtime: Runtime, source: FileSource, spool: Path) -> None:
    frame(10, seed=1).to_csv(spool / "a.csv", index=False)
    pq = frame(7, seed=2, start=100)
    pq["ts"] = pd.to_datetime(pq["ts"])                      # a real timestamp column in Parquet
    pq["healthy"] = pd.Series([True, False, None, True, True, False, True], dtype=object)
    pq.to_parquet(spool / "b.parquet")
    write_ndjson(spool / "c.ndjson", frame(5, seed=3, start=200).to_dict("records"))

    assert source.poll() == 22
    assert stored(runtime) == 22
    assert sorted(p.name for p in spool.iterdir() if p.is_file()) == []
    assert sorted(p.name for p in (spool / "done").iterdir()) == ["a.csv", "b.parquet", "c.ndjson"]
    assert not (spool / "failed").exists()
    assert runtime.registry.get_sample_value("vigil_records_ingested_total",
                                             {"detector": "web", "source": "file"}) == 22

    assert source.poll() == 0
    assert stored(runtime) == 22

    window = runtime.vigil.repo.training_window("web", T0, 100)
    by_minute = {int((r.ts - T0).total_seconds() // 60): r for r in window}
    assert sorted(by_minute) == [*range(10), *range(100, 107), *range(200, 205)]
    first = by_minute[0]
    expected = frame(10, seed=1).iloc[0]
    assert first.key == "web-0"
    assert first.fields["load"] == pytest.approx(expected["load"])
    assert first.fields["region"] == expected["region"]
    assert first.fields["healthy"] is None
    assert [by_minute[100 + i].fields["healthy"] for i in range(3)] == [True, False, None]
    assert by_minute[100].ts.tzinfo == UTC


def test_bad_rows_are_listed_next_to_the_done_file(runtime: Runtime, source: FileSource, spool: Path) -> None:
    good = frame(4, seed=4)
    records = good.to_dict("records")
    records.insert(1, {**records[0], "load": "lots"})
    records.insert(3, {**records[0], "ts": "not a time"})
    records.append({**records[0], "cpu": None})
    write_ndjson(spool / "mixed.ndjson", [*records, "text"])
    with (spool / "mixed.ndjson").open("a", encoding="utf-8") as fh:
        fh.write("{broken\n")

    assert source.poll() == 4
    assert stored(runtime) == 4
    assert (spool / "done" / "mixed.ndjson").is_file()
    report = json.loads((spool / "done" / "mixed.ndjson.rejects.json").read_text(encoding="utf-8"))
    assert report["file"] == "mixed.ndjson"
    assert [(r["index"], r["field"], r["reason"]) for r in report["rejected"]] == [
        (1, "load", "wrong_type"), (3, "ts", "bad_timestamp"), (6, "cpu", "missing_field"),
        (7, None, "not_an_object"), (8, None, "malformed")]
    assert all(r["message"].startswith(f"record {r['index']}: ") for r in report["rejected"])
    assert not list((spool / "done").glob(".*")), "the temporary rejects file was renamed"
    assert runtime.vigil.repo.counts()["web"].rejected == 5
    assert rejected_metric(runtime, "wrong_type") == 1
    assert {r["origin"] for r in runtime.vigil.repo.list_rejects("web")} == {"mixed.ndjson"}


def test_csv_bad_cell_refuses_only_its_row(runtime: Runtime, source: FileSource, spool: Path) -> None:
    """CSV has no types: one bad cell must not turn its whole column into text and refuse every row."""
    data = frame(6, seed=5)
    data["cpu"] = data["cpu"].astype(object)
    data.loc[2, "cpu"] = "lots"
    data.loc[4, "region"] = None
    data["healthy"] = ["true", "False", "TRUE", "false", "True", "maybe"]
    data.to_csv(spool / "rows.csv", index=False)
    assert source.poll() == 3
    report = json.loads((spool / "done" / "rows.csv.rejects.json").read_text(encoding="utf-8"))
    assert [(r["index"], r["field"], r["reason"]) for r in report["rejected"]] == [
        (2, "cpu", "wrong_type"), (4, "region", "missing_field"), (5, "healthy", "wrong_type")]
    window = runtime.vigil.repo.training_window("web", T0, 100)
    assert [r.fields["healthy"] for r in window] == [True, False, False]
    assert [r.fields["cpu"] for r in window] == pytest.approx([data.loc[i, "cpu"] for i in (0, 1, 3)])


def test_clean_file_has_no_rejects_file(source: FileSource, spool: Path) -> None:
    frame(3).to_csv(spool / "clean.csv", index=False)
    source.poll()
    assert sorted(p.name for p in (spool / "done").iterdir()) == ["clean.csv"]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("garbage.parquet", b"\x00\x01not parquet at all\xff" * 10, "cannot read as parquet"),
        ("ragged.csv", b"load,cpu\n1,2\n3,4,5,6\n", "cannot read as csv"),
        ("empty.csv", b"", "cannot read as csv"),
        ("latin1.ndjson", b'{"region": "\xe9"}\n', "cannot read as ndjson"),
        ("notes.txt", b"load=1\n", "unknown format"),
    ],
    ids=["garbage-parquet", "ragged-csv", "empty-csv", "not-utf8", "unknown-suffix"],
)
def test_unreadable_file_goes_to_failed(runtime: Runtime, source: FileSource, spool: Path, name: str,
                                        content: bytes, problem: str) -> None:
    frame(2).to_csv(spool / "fine.csv", index=False)
    (spool / name).write_bytes(content)
    assert source.poll() == 2
    assert (spool / "failed" / name).read_bytes() == content
    reason = (spool / "failed" / f"{name}.reason.txt").read_text(encoding="utf-8")
    assert reason.startswith(f"file {name}: {problem}")
    assert (spool / "done" / "fine.csv").is_file()
    assert rejected_metric(runtime, "unreadable_file") == 1
    [reject] = runtime.vigil.repo.list_rejects("web")
    assert (reject["reason"], reject["origin"], reject["index"]) == ("unreadable_file", name, None)
    assert stored(runtime) == 2
    assert source.poll() == 0
    assert rejected_metric(runtime, "unreadable_file") == 1


def test_dot_files_and_folders_are_left_alone(runtime: Runtime, source: FileSource, spool: Path) -> None:
    frame(3).to_csv(spool / ".partial.csv", index=False)
    (spool / "sub").mkdir()
    frame(3).to_csv(spool / "sub" / "nested.csv", index=False)
    assert source.poll() == 0
    assert (spool / ".partial.csv").is_file()
    assert (spool / "sub" / "nested.csv").is_file()
    assert not (spool / "done").exists()
    os.rename(spool / ".partial.csv", spool / "partial.csv")      # the writer's final rename
    assert source.poll() == 3
    assert (spool / "done" / "partial.csv").is_file()


def test_young_files_wait_for_settle(runtime: Runtime, spool: Path) -> None:
    det_source = runtime.config.detectors["web"].source
    assert isinstance(det_source, FileSourceConfig)
    settling = FileSource(det_source.model_copy(update={"settle": 60.0}), runtime.vigil.sink("web", "file"))
    frame(3).to_csv(spool / "young.csv", index=False)
    frame(2, start=10).to_csv(spool / "old.csv", index=False)
    past = time.time() - 120
    os.utime(spool / "old.csv", (past, past))
    assert settling.poll() == 2
    assert (spool / "young.csv").is_file()
    assert (spool / "done" / "old.csv").is_file()
    assert stored(runtime) == 2


def test_crash_after_store_before_move(runtime: Runtime, source: FileSource, spool: Path) -> None:
    path = spool / "once.csv"
    frame(6).to_csv(path, index=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    # what process() stores before it moves the file; then the daemon "dies"
    runtime.vigil.ingest("web", read_records(path), "file", origin=path.name, watermark=(f"file:{digest}", path.name))
    assert stored(runtime) == 6
    assert source.poll() == 0
    assert stored(runtime) == 6
    assert (spool / "done" / "once.csv").is_file()
    assert not path.exists()


def test_same_file_dropped_again_is_not_stored_twice(runtime: Runtime, source: FileSource, spool: Path) -> None:
    frame(4).to_csv(spool / "again.csv", index=False)
    assert source.poll() == 4
    shutil.copy(spool / "done" / "again.csv", spool / "again.csv")
    assert source.poll() == 0
    assert stored(runtime) == 4
    done = sorted(p.name for p in (spool / "done").iterdir())
    assert len(done) == 2 and "again.csv" in done, done
    assert not (spool / "again.csv").exists()


def test_explicit_format_overrides_suffix(runtime: Runtime, spool: Path) -> None:
    det_source = runtime.config.detectors["web"].source
    assert isinstance(det_source, FileSourceConfig)
    as_csv = FileSource(det_source.model_copy(update={"format": "csv"}), runtime.vigil.sink("web", "file"))
    frame(3).to_csv(spool / "export.dat", index=False)
    assert as_csv.poll() == 3
    assert (spool / "done" / "export.dat").is_file()


# --- only regular files in the spool (issue 28, finding 10): a symbolic link is refused and never followed
# out of the spool; a pipe or folder is left alone (a pipe never blocks a poll) ---------------------------------

SECRET_HOST = "secret-host-outside-the-spool"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def poll_in_thread(source: FileSource) -> tuple[threading.Thread, list[int]]:
    """Poll in a daemon thread, so that a poll blocked on a pipe fails the test instead of hanging it."""
    accepted: list[int] = []
    thread = threading.Thread(target=lambda: accepted.append(source.poll()), daemon=True, name="file-poll")
    thread.start()
    thread.join(60)
    return thread, accepted


def test_links_are_refused_and_not_followed_pipes_and_folders_left_alone(
        source: FileSource, runtime: Runtime, spool: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = frame(5).assign(host=SECRET_HOST)
    secret.to_csv(outside / "secret.csv", index=False)
    (spool / "secret.csv").symlink_to(outside / "secret.csv")          # a link to a file out of the spool
    (spool / "elsewhere.csv").symlink_to(outside)                       # a link to a folder
    (spool / "dangling.csv").symlink_to(outside / "gone.csv")           # a link to nothing
    os.mkfifo(spool / "pipe.csv")                                       # opening it would block a reader
    (spool / "folder.csv").mkdir()
    frame(4, seed=1).to_csv(spool / "real.csv", index=False)

    thread, accepted = poll_in_thread(source)
    try:
        assert not thread.is_alive(), "the poll blocked (on the pipe?)"
    finally:
        with contextlib.suppress(OSError):                              # free a reader blocked on the pipe
            os.close(os.open(spool / "pipe.csv", os.O_WRONLY | os.O_NONBLOCK))
    assert accepted == [4]
    assert stored(runtime) == 4, "only the regular file was read"
    keys = {r.key for r in runtime.vigil.repo.training_window("web", EPOCH, 100)}
    assert SECRET_HOST not in keys and keys == {"web-0", "web-1", "web-2"}

    for name in ("secret.csv", "elsewhere.csv", "dangling.csv"):
        failed = spool / "failed" / name
        assert failed.is_symlink(), f"{name}: the link itself is moved to failed/"
        reason = (spool / "failed" / f"{name}.reason.txt").read_text(encoding="utf-8")
        assert reason.startswith(f"file {name}: a symbolic link, not followed"), reason
    assert (outside / "secret.csv").is_file(), "the linked file is left where it is"
    assert (spool / "pipe.csv").exists() and (spool / "folder.csv").is_dir(), "left alone"
    assert (spool / "done" / "real.csv").is_file()
    assert rejected_metric(runtime, "unreadable_file") == 3

    thread, accepted = poll_in_thread(source)                           # the next poll: nothing new, no block
    assert not thread.is_alive() and accepted == [0]


def test_a_link_swapped_in_after_listing_is_not_followed(source: FileSource, runtime: Runtime, spool: Path,
                                                         tmp_path: Path) -> None:
    """`process` opens with O_NOFOLLOW: a regular file replaced by a link between listing and reading (a race
    the folder's writer controls) is refused too."""
    outside = tmp_path / "outside.csv"
    frame(3).assign(host=SECRET_HOST).to_csv(outside, index=False)
    path = spool / "swap.csv"
    frame(3, seed=2).to_csv(path, index=False)
    [listed] = source._ready_files()
    path.unlink()
    path.symlink_to(outside)
    assert source.process(listed) == 0
    assert stored(runtime) == 0
    assert (spool / "failed" / "swap.csv").is_symlink()
