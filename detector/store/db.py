"""Open the database and bring its schema to the latest Alembic revision."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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

__all__ = ["current_revision", "head_revision", "open_engine", "open_repository", "session_factory", "upgrade"]

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock taken for the migration transaction: instances started together on one
# database would otherwise race to create the same tables, and all but one would fail to start
_MIGRATION_LOCK = 0x7669_6731


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL mode, a busy timeout and enforced foreign keys."""
    try:
        if url.startswith("sqlite"):
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                   json_serializer=fastjson.dumps, json_deserializer=fastjson.loads)
            event.listen(engine, "connect", _sqlite_pragmas)
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


def open_repository(url: str, migrate: bool = True) -> Repository:
    """A repository on the store at `url`, its schema brought up to date first (unless told not to)."""
    engine = open_engine(url)
    if migrate:
        upgrade(engine)
    return Repository(session_factory(engine))


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
