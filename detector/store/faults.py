"""How the store reports a failed database operation: one named error, chosen from the driver's exception."""

from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, OperationalError, SQLAlchemyError, StatementError

from detector.errors import StorageError, StoreBusyError, StoreRefusedValueError
from detector.records import text_problem

__all__ = ["check_text", "storage_error"]

# SQLite's result codes for a database (or table) another connection holds: the busy timeout ran out
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def _value_refused(exc: SQLAlchemyError) -> bool:
    """The database or its driver refused a value (NUL in PostgreSQL text, a time that overflows when converted
    to UTC): the store is fine and retrying cannot help."""
    if isinstance(exc, DataError):
        return True
    return (isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)
            and isinstance(exc.orig, OverflowError | ValueError))


def _busy(exc: SQLAlchemyError) -> bool:
    """SQLite gave up waiting for a lock another connection holds ("database is locked")."""
    code = getattr(exc.orig, "sqlite_errorcode", None) if isinstance(exc, OperationalError) else None
    return code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def storage_error(operation: str, exc: SQLAlchemyError) -> StorageError:
    """The error to raise for `exc`: `StoreRefusedValueError` for a refused value, `StoreBusyError` for a lock
    that stayed held, else `StorageError`."""
    if _value_refused(exc):
        return StoreRefusedValueError(operation, exc)
    if _busy(exc):
        return StoreBusyError(operation, exc)
    return StorageError(operation, exc)


def check_text(operation: str, field: str, value: str | None) -> None:
    """Refuse (`StoreRefusedValueError` naming `field`) a text no store takes alike: a NUL character, which
    PostgreSQL refuses and SQLite would keep, or a lone surrogate, which is not valid Unicode. Records are
    refused by the same rule (`detector.records.text_problem`), so both stores answer the same."""
    problem = None if value is None else text_problem(value)
    if problem is not None:
        raise StoreRefusedValueError(operation, ValueError(f"{field}: text {problem}"))
