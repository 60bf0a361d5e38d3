"""Sessions and transactions of the store's classes: a failed database operation comes out as the one
storage error `storage_error` picks, named after the operation.

On SQLite the threads of this process write one at a time through the store's `WriteGate` (a lock that
they queue on instead of polling in SQLite's busy handler), and every write waits for the store at most
its write timeout (`store.write_timeout`): for its turn here, then for the database's write lock, which
another process or connection may hold. A caller may shorten that with `write_deadline` (an HTTP request
that waited for a thread). A write that runs out of time raises `StoreBusyError`: nothing was written.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from detector.errors import StorageError, StoreBusyError, StoreRefusedValueError
from detector.store.faults import storage_error

__all__ = ["DEFAULT_WRITE_TIMEOUT_S", "SessionScope", "StoreState", "WriteFailure", "WriteGate", "write_deadline"]

DEFAULT_WRITE_TIMEOUT_S = 5.0
# a write that waited for its turn longer than this share of the timeout gets SQLite's busy timeout shortened
# to what is left (a pragma before and after its transaction); shorter waits keep the full timeout
_SHORTEN_AFTER = 0.1

_deadline: ContextVar[float | None] = ContextVar("vigil_store_write_deadline", default=None)


@contextmanager
def write_deadline(at: float) -> Iterator[None]:
    """Writes made inside the block (in this context: a thread that runs it, a task) give up at `at`
    (`time.monotonic()`), when that comes before their write timeout runs out."""
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """A write the store could not take: when, which operation, and the error's class."""

    at: datetime
    operation: str
    error: str


class StoreState:
    """What the store's writes saw last: the time of the last one that committed, and the last failure (a
    store that could not take a write, not a value it refused) when none has committed since."""

    def __init__(self) -> None:
        self.last_write: datetime | None = None
        self.failure: WriteFailure | None = None

    def committed(self) -> None:
        self.last_write = datetime.now(UTC)
        self.failure = None

    def failed(self, operation: str, exc: StorageError) -> None:
        if not isinstance(exc, StoreRefusedValueError):
            cause = exc.cause.__class__.__name__
            self.failure = WriteFailure(datetime.now(UTC), operation, f"{exc.__class__.__name__} ({cause})")


class WriteGate:
    """The writes of one store in this process: on SQLite they take turns (one writer at a time), each waiting
    at most `timeout` seconds in all; elsewhere they pass at once. Holds the store's `StoreState`."""

    def __init__(self, timeout: float = DEFAULT_WRITE_TIMEOUT_S, sqlite: bool = False) -> None:
        if not timeout > 0:
            raise ValueError(f"a write timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.sqlite = sqlite
        self.state = StoreState()
        # reentrant: a store method that writes may call another one that writes, in the same thread
        self._lock = threading.RLock()

    def budget(self) -> float:
        """Seconds a write starting now may wait: the timeout, or less before a `write_deadline`."""
        deadline = _deadline.get()
        return self.timeout if deadline is None else min(self.timeout, deadline - time.monotonic())

    @contextmanager
    def hold(self, operation: str) -> Iterator[float]:
        """This thread's turn to write (on SQLite); yields the seconds it may still wait for the database.
        `StoreBusyError` when the turn does not come within the budget."""
        budget = self.budget()
        if not self.sqlite:
            yield budget
            return
        started = time.monotonic()
        if budget <= 0 or not self._lock.acquire(timeout=budget):
            waited = time.monotonic() - started
            raise StoreBusyError(operation, TimeoutError(
                f"no turn to write within {max(budget, 0.0):.1f} s (waited {waited:.1f} s; store.write_timeout = "
                f"{self.timeout:g} s): another write holds the store"))
        try:
            yield budget - (time.monotonic() - started)
        finally:
            self._lock.release()


@contextmanager
def _busy_timeout(session: Session, seconds: float, restore: float) -> Iterator[None]:
    """SQLite's busy timeout of the session's connection set to `seconds` for the block, then back to `restore`."""
    driver = session.connection().connection.driver_connection
    if driver is None:
        yield
        return
    driver.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")
    try:
        yield
    finally:
        with suppress(sqlite3.Error):
            driver.execute(f"PRAGMA busy_timeout = {int(restore * 1000)}")


class SessionScope:
    """Base of the store's classes: their sessions, which never leave them, and the store's write gate (one per
    store: the `Repository` makes it and hands it to the classes it holds)."""

    def __init__(self, sessions: sessionmaker[Session], gate: WriteGate | None = None) -> None:
        self._sessions = sessions
        if gate is None:
            bind = sessions.kw.get("bind")
            gate = WriteGate(sqlite=bind is not None and bind.dialect.name == "sqlite")
        self._gate = gate

    @property
    def state(self) -> StoreState:
        """What the store's writes saw last (shared by every class of the same store)."""
        return self._gate.state

    @contextmanager
    def _tx(self, operation: str, queue: bool = True) -> Iterator[Session]:
        """A session in a transaction, committed when the block ends (rolled back when it raises).

        On SQLite the transaction waits for its turn to write first (`WriteGate`), unless `queue` is false (the
        block then takes its turn itself, with `_gate.hold`, before it writes)."""
        gate = self._gate
        try:
            with ExitStack() as stack:
                left = stack.enter_context(gate.hold(operation)) if queue else gate.timeout
                session = stack.enter_context(self._sessions.begin())
                if queue and gate.sqlite and left < gate.timeout * (1 - _SHORTEN_AFTER):
                    stack.enter_context(_busy_timeout(session, left, gate.timeout))
                yield session
        except SQLAlchemyError as exc:
            error = storage_error(operation, exc)
            gate.state.failed(operation, error)
            raise error from exc
        except StorageError as exc:
            gate.state.failed(operation, exc)
            raise
        gate.state.committed()

    @contextmanager
    def _read(self, operation: str) -> Iterator[Session]:
        """A session to read with, closed (and its transaction rolled back) when the block ends."""
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as exc:
            raise storage_error(operation, exc) from exc
