"""Open the database and bring its schema to the latest Alembic revision."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from detector import fastjson
from detector.errors import StorageError
from detector.store.repository import Repository
from detector.store.session import DEFAULT_WRITE_TIMEOUT_S

__all__ = ["SYNCHRONOUS", "Synchronous", "current_revision", "head_revision", "open_engine", "open_repository",
           "session_factory", "upgrade"]

Synchronous = Literal["full", "normal"]
SYNCHRONOUS: tuple[Synchronous, ...] = ("full", "normal")

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock taken for the migration transaction: instances started together on one
# database would otherwise race to create the same tables, and all but one would fail to start
_MIGRATION_LOCK = 0x7669_6731


def _sqlite_pragmas(synchronous: Synchronous, busy_timeout_s: float) -> Callable[[Any, Any], None]:
    """The connect hook of a SQLite engine: WAL, `synchronous`, enforced foreign keys, the busy timeout."""
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")

    def connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={max(1, int(busy_timeout_s * 1000))}")
        cursor.close()

    return connect


def _private_sqlite_file(path: Path) -> None:
    """Create the store's folder (0700) and file (0600) when missing, before SQLite does (its -wal and -shm files
    take the file's mode); warn, as for the token file, when the file, its -wal or -shm is open to other users,
    or the folder to users outside its group."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    if path.parent.stat().st_mode & 0o007:
        logger.warning("store folder is open to other users; chmod o-rwx it", extra={"path": str(path.parent)})
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & 0o077:
            logger.warning("store file is readable by other users; chmod 600 it",
                           extra={"path": str(file), "mode": oct(mode & 0o777)})


def open_engine(url: str, write_timeout: float | None = None, synchronous: Synchronous = "full") -> Engine:
    """An engine for `url`. SQLite gets WAL mode, `synchronous` (FULL: a commit is on disk before it returns;
    NORMAL: the last commits may be lost to a power failure or an OS crash), a busy timeout and enforced foreign
    keys, and a file only its owner may read. A write waits for the store at most `write_timeout` seconds
    (default 5; on SQLite, see `detector.store.session`)."""
    timeout = DEFAULT_WRITE_TIMEOUT_S if write_timeout is None else write_timeout
    try:
        if url.startswith("sqlite"):
            connect = _sqlite_pragmas(synchronous, timeout)
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:" and not path.startswith("file:"):
                _private_sqlite_file(Path(path.partition("?")[0]))
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout},
                                   json_serializer=fastjson.dumps, json_deserializer=fastjson.loads)
            event.listen(engine, "connect", connect)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                                   json_serializer=fastjson.dumps, json_deserializer=fastjson.loads)
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError("open", exc) from exc
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return head or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def open_repository(url: str, migrate: bool = True, write_timeout: float | None = None,
                    synchronous: Synchronous = "full") -> Repository:
    """A repository on the store at `url` (`open_engine` says what the options do), its schema brought up to
    date first (unless told not to)."""
    engine = open_engine(url, write_timeout, synchronous)
    if migrate:
        upgrade(engine)
    return Repository(session_factory(engine), write_timeout)


def upgrade(engine: Engine) -> str:
    """Apply every pending migration; returns the revision the database is now at."""
    cfg = _alembic_config()
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise StorageError("migration", exc) from exc
    revision = current_revision(engine) or ""
    logger.info("database schema at revision", extra={"revision": revision})
    return revision
