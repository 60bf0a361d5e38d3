"""Throw-away PostgreSQL databases for tests (the server at 127.0.0.1:5432, user postgres, trust auth)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

ADMIN_URL = os.environ.get("VIGIL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def unavailable_reason() -> str | None:
    """Why PostgreSQL cannot be used for tests here, or None when it can."""
    try:
        engine = sa.create_engine(ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {ADMIN_URL}: {exc.__class__.__name__}"
    return None


def require_postgres() -> None:
    """Skip the test without PostgreSQL, except in CI (CI=true), where it must be there."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI must start PostgreSQL)")
    pytest.skip(reason)


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database; dropped afterwards. Yields its SQLAlchemy URL."""
    name = f"vigil_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
