"""The exception tree of the daemon: every error raised on purpose derives from VigilError."""

from __future__ import annotations

import errno
from pathlib import Path

__all__ = [
    "ConfigError",
    "IngestError",
    "InvalidWindowError",
    "ListenError",
    "ModelPrunedError",
    "NoActiveModelError",
    "NoEarlierModelError",
    "NoRecordsError",
    "SourceError",
    "StorageError",
    "StoreBusyError",
    "StoreRefusedValueError",
    "TooFewRecordsError",
    "TrainingFailedError",
    "UnknownDetectorError",
    "UnknownMaintenanceWindowError",
    "UnknownModelVersionError",
    "UnknownOutlierError",
    "VigilError",
]


class VigilError(Exception):
    """Base for every error the daemon raises on purpose."""


class ConfigError(VigilError):
    """The configuration file is missing, unreadable or invalid."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"invalid config {path}: {problem}")
        self.path = Path(path)
        self.problem = problem


class UnknownDetectorError(VigilError, LookupError):
    """A request or command named a detector that is not configured."""

    def __init__(self, name: str, known: list[str]) -> None:
        known_text = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown detector {name!r} (configured: {known_text})")
        self.name = name


class StorageError(VigilError):
    """A database operation failed."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        super().__init__(f"database {operation} failed: {cause.__class__.__name__}: {cause}")
        self.operation = operation
        self.cause = cause


class StoreRefusedValueError(StorageError):
    """The database or its driver refused a value a request supplied (NUL in PostgreSQL text, a time that
    overflows when converted to UTC): the store is fine and retrying cannot help."""


class StoreBusyError(StorageError):
    """The store stayed locked for writing longer than a write may wait (`store.write_timeout`: on SQLite another
    process or connection holds its write lock): nothing was written, and a retry later may succeed."""


class ListenError(VigilError):
    """The HTTP API cannot listen on its address (the port is taken, the address is not this machine's)."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        hint = (": another process listens on that port; stop it or set another http.port"
                if cause.errno == errno.EADDRINUSE else "")
        super().__init__(f"cannot listen on {host}:{port} (http.host, http.port): {cause.strerror or cause}{hint}")
        self.host = host
        self.port = port


class SourceError(VigilError):
    """A pulling source could not be read this time (it is retried at the next poll)."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(message)
        self.source = source


class IngestError(VigilError):
    """A whole request or file could not be read as records (the records inside are not reached)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class NoRecordsError(VigilError):
    """A command needs records of a detector (or a file) and there are none."""


class TooFewRecordsError(VigilError):
    """There are records, but fewer than the work at hand needs."""


class NoActiveModelError(VigilError):
    """A detector has no active model for what was asked (scoring, a report, a rollback)."""

    def __init__(self, detector: str, message: str | None = None) -> None:
        super().__init__(message or f"detector {detector!r} has no active model yet; run `vigil train {detector}`")
        self.detector = detector


class UnknownModelVersionError(VigilError, LookupError):
    """A model version that the detector does not have."""

    def __init__(self, detector: str, version: int) -> None:
        super().__init__(f"detector {detector!r} has no model version {version}")
        self.detector = detector
        self.version = version


class ModelPrunedError(VigilError):
    """A model version whose weights retention removed, so it cannot be made active."""

    def __init__(self, detector: str, version: int) -> None:
        super().__init__(f"model version {version} of {detector!r} was pruned (its weights are gone)")
        self.detector = detector
        self.version = version


class NoEarlierModelError(VigilError):
    """A rollback with no version before the active one."""

    def __init__(self, detector: str) -> None:
        super().__init__(f"detector {detector!r} has no earlier model version to roll back to")
        self.detector = detector


class UnknownOutlierError(VigilError, LookupError):
    """An outlier id that is not stored."""

    def __init__(self, outlier_id: int) -> None:
        super().__init__(f"no outlier {outlier_id}")
        self.outlier_id = outlier_id


class UnknownMaintenanceWindowError(VigilError, LookupError):
    """A maintenance window id that the detector does not have."""

    def __init__(self, detector: str, window_id: int) -> None:
        super().__init__(f"detector {detector!r} has no maintenance window {window_id}")
        self.detector = detector
        self.window_id = window_id


class InvalidWindowError(VigilError, ValueError):
    """A maintenance window whose times cannot be used (no time zone, or an end not after its start)."""


class TrainingFailedError(VigilError):
    """Training a model for an offline command failed."""
