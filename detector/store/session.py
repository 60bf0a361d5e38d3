"""Sessions and transactions of the store's classes: a failed database operation comes out as the one
storage error `storage_error` picks, named after the operation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from detector.store.faults import storage_error

__all__ = ["SessionScope"]


class SessionScope:
    """Base of the store's classes: their sessions, which never leave them."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    @contextmanager
    def _tx(self, operation: str) -> Iterator[Session]:
        """A session in a transaction, committed when the block ends (rolled back when it raises)."""
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise storage_error(operation, exc) from exc

    @contextmanager
    def _read(self, operation: str) -> Iterator[Session]:
        """A session to read with, closed (and its transaction rolled back) when the block ends."""
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as exc:
            raise storage_error(operation, exc) from exc
