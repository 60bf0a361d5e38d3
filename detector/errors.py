"""The exception tree of the daemon: every error raised on purpose derives from VigilError."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "IngestError",
    "SourceError",
    "StorageError",
    "UnknownDetectorError",
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
