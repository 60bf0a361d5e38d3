"""How the store reports a failed database operation: one named error, chosen from the driver's exception."""

from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError, StatementError

from detector.errors import StorageError, StoreRefusedValueError

__all__ = ["storage_error"]


def _value_refused(exc: SQLAlchemyError) -> bool:
    """The database or its driver refused a value (NUL in PostgreSQL text, a time that overflows when converted
    to UTC): the store is fine and retrying cannot help."""
    if isinstance(exc, DataError):
        return True
    return (isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)
            and isinstance(exc.orig, OverflowError | ValueError))


def storage_error(operation: str, exc: SQLAlchemyError) -> StorageError:
    """The error to raise for `exc`: `StoreRefusedValueError` for a refused value, else `StorageError`."""
    if _value_refused(exc):
        return StoreRefusedValueError(operation, exc)
    return StorageError(operation, exc)
