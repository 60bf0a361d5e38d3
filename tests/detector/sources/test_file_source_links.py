"""The file source reads only regular files in its spool folder (issue 28, finding 10): a symbolic link is
refused and never followed out of the spool, and a pipe or folder is left alone (a pipe never blocks a poll)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector.config import Config, load_config
from detector.daemon import Runtime
from detector.sources.files import FileSource
from tests.detector.sources.test_file_source import FILE_DETECTOR, frame, rejected_metric, stored

SECRET_HOST = "secret-host-outside-the-spool"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


@pytest.fixture
def config(write_config: Callable[[str], Path], spool: Path) -> Config:
    return load_config(write_config(FILE_DETECTOR))


@pytest.fixture
def source(runtime: Runtime) -> FileSource:
    [file_source] = runtime.sources
    assert isinstance(file_source, FileSource)
    return file_source


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
