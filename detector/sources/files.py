"""The file source: CSV, Parquet or NDJSON files dropped into a spool folder, each ingested once.

Only regular files in the folder itself are read: a symbolic link is refused (moved to `failed/`, never
followed out of the spool), and folders, pipes and sockets are left alone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import IO, Any

import pandas as pd

from detector.config.sources import FileSourceConfig
from detector.errors import IngestError
from detector.records import Rejection, parse_json_body
from detector.sources.base import Sink

__all__ = ["FileSource", "read_records"]

logger = logging.getLogger(__name__)

_SUFFIX_FORMAT = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".ndjson": "ndjson",
                  ".jsonl": "ndjson", ".json": "ndjson"}


def _frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of Python scalars; empty cells (NaN, NaT) become None, i.e. missing."""
    return [{str(k): (None if _is_missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NaT or (isinstance(value, float) and value != value)


_CSV_BOOLS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}


def _csv_value(value: Any) -> Any:
    """A CSV cell pandas left as text because one other cell of its column is not a number
    (or not a boolean): convert it as pandas would have, so only the bad cell's record is refused."""
    if not isinstance(value, str):
        return value
    if value in _CSV_BOOLS:
        return _CSV_BOOLS[value]
    for parse in (int, float):
        try:
            return parse(value)
        except ValueError:
            pass
    return value


def read_records(path: Path, fmt: str = "auto", fh: IO[bytes] | None = None) -> list[Any]:
    """All records of a CSV, Parquet or NDJSON file (read from `fh` when given: `path` then only names it);
    IngestError when the file cannot be read."""
    kind = fmt if fmt != "auto" else _SUFFIX_FORMAT.get(path.suffix.lower())
    if kind is None:
        raise IngestError("unreadable_file", f"file {path.name}: unknown format (use .csv, .parquet or .ndjson)")
    source: Path | IO[bytes] = path if fh is None else fh
    try:
        if kind == "csv":
            frame = pd.read_csv(source, keep_default_na=False, na_values=[""])   # only empty cells are missing
            return [{k: _csv_value(v) for k, v in row.items()} for row in _frame_records(frame)]
        if kind == "parquet":
            return _frame_records(pd.read_parquet(source))
        # .ndjson/.jsonl are read line by line; .json may also hold one array or object
        return parse_json_body(path.read_bytes() if fh is None else fh.read(),
                               "application/json" if path.suffix.lower() == ".json" else "application/x-ndjson")
    except Exception as exc:  # pandas, pyarrow and the OS each raise their own classes for a bad file
        problem = str(exc).strip().replace("\n", " ")
        raise IngestError("unreadable_file", f"file {path.name}: cannot read as {kind}: {problem}") from exc


def _digest(fh: IO[bytes]) -> str:
    """The SHA-256 of what `fh` holds; it is left at its start again."""
    sha = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        sha.update(block)
    fh.seek(0)
    return sha.hexdigest()


_NOT_FOLLOWED = ("the file source reads only regular files in its folder; copy or move the file there "
                 "instead of linking to it")


def _open_regular(path: Path) -> IO[bytes]:
    """`path` opened for reading when it is a regular file, never through a symbolic link (O_NOFOLLOW, so a
    link swapped in after the folder was listed is refused too) and never blocking on a pipe;
    IngestError otherwise."""
    if path.is_symlink():
        raise IngestError("unreadable_file", f"file {path.name}: a symbolic link, not followed: {_NOT_FOLLOWED}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IngestError("unreadable_file",
                              f"file {path.name}: a symbolic link, not followed: {_NOT_FOLLOWED}") from None
        raise IngestError("unreadable_file", f"file {path.name}: cannot open: {exc.strerror}") from None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise IngestError("unreadable_file", f"file {path.name}: not a regular file: {_NOT_FOLLOWED}")
    return fh


class FileSource:
    """Polls a spool folder; each file is stored once (watermark by content hash), then moved.

    A file that reads is moved to `done/` (with `NAME.rejects.json` listing refused records, if
    any); one that cannot be read goes to `failed/` with `NAME.reason.txt`. Files whose name
    starts with '.' or that changed within `settle` seconds are left for the next poll, so
    writers should write under a dot-name and rename when complete.
    """

    def __init__(self, cfg: FileSourceConfig, sink: Sink) -> None:
        self.detector = sink.detector
        self.poll_interval_s = cfg.poll_interval
        self._cfg = cfg
        self._sink = sink
        self._done = cfg.path / "done"
        self._failed = cfg.path / "failed"

    def _ready_files(self) -> list[Path]:
        """Regular files and symbolic links (to be refused) that have settled; nothing is followed."""
        now = time.time()
        files = []
        for entry in sorted(self._cfg.path.iterdir()):
            if entry.name.startswith("."):
                continue
            try:
                info = entry.lstat()
            except FileNotFoundError:           # gone since the folder was listed
                continue
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
                continue                        # done/, failed/, other folders, pipes, sockets, devices
            if now - info.st_mtime < self._cfg.settle:
                continue
            files.append(entry)
        return files

    def _move(self, path: Path, folder: Path) -> Path:
        folder.mkdir(exist_ok=True)
        target = folder / path.name
        if target.exists():
            target = folder / f"{path.stem}.{int(time.time() * 1000)}{path.suffix}"
        shutil.move(str(path), target)
        return target

    def _fail(self, path: Path, message: str) -> None:
        target = self._move(path, self._failed)
        target.with_name(target.name + ".reason.txt").write_text(message + "\n", encoding="utf-8")
        logger.warning("file refused", extra={"detector": self.detector, "file": path.name, "reason": message})

    def _write_rejects(self, target: Path, rejected: list[Rejection]) -> None:
        body = {"file": target.name, "rejected": [r.to_dict() for r in rejected]}
        tmp = target.with_name("." + target.name + ".rejects.json")
        tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, target.with_name(target.name + ".rejects.json"))

    def _read(self, path: Path) -> tuple[str, list[Any] | None]:
        """The file's watermark and its records (None when it was stored before a crash, not yet moved)."""
        with _open_regular(path) as fh:
            mark = f"file:{_digest(fh)}"
            if self._sink.watermark(mark) is not None:
                return mark, None
            return mark, read_records(path, self._cfg.format, fh)

    def process(self, path: Path) -> int:
        """Ingest one file and move it; returns records accepted. A symbolic link or anything else that is not
        a regular file is refused like an unreadable file (moved to failed/ with the reason)."""
        try:
            mark, raws = self._read(path)
        except IngestError as exc:
            self._sink.reject_whole(exc.reason, exc.message, origin=path.name)
            self._fail(path, exc.message)
            return 0
        if raws is None:
            self._move(path, self._done)        # stored before a crash, not yet moved
            return 0
        result = self._sink.ingest(raws, origin=path.name, watermark=(mark, path.name))
        target = self._move(path, self._done)
        if result.rejected:
            self._write_rejects(target, result.rejected)
        logger.info("file ingested", extra={"detector": self.detector, "file": path.name,
                                            "accepted": result.accepted, "rejected": len(result.rejected)})
        return result.accepted

    def poll(self) -> int:
        return sum(self.process(path) for path in self._ready_files())
