"""What a source is: something that hands a detector's records to the daemon through a narrow `Sink`.

A source never sees the store, the scorer or the config of other detectors. It reads its input, hands raw
records to `Sink.ingest` (validation, scoring and storing happen there, in one transaction together with
the source's watermark), refuses a whole unreadable input with `Sink.reject_whole`, and resumes from
`Sink.watermark` after a restart. Pull sources are polled by the scheduler; push sources (http) are fed by
the API. `detector.sources.registry` maps each `source.type` of the config to its class.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from detector.records import IngestResult, Rejection

__all__ = ["PullSource", "Sink"]


class Sink(Protocol):
    """A source's whole view of the daemon: its detector's record field names and the record path."""

    @property
    def detector(self) -> str:
        """The detector this sink feeds."""
        ...

    @property
    def ts_field(self) -> str:
        """The record field that holds the time."""
        ...

    @property
    def key_field(self) -> str:
        """The record field that holds the entity key."""
        ...

    def ingest(self, raws: list[Any], origin: str | None = None, watermark: tuple[str, str] | None = None,
               start_index: int = 0) -> IngestResult:
        """Validate, score and store a batch (and the watermark with it, in one transaction)."""
        ...

    def reject_whole(self, reason: str, message: str, origin: str | None = None,
                     raw: str | None = None) -> Rejection:
        """Record that a whole input (a body, a file) was refused."""
        ...

    def watermark(self, name: str) -> str | None:
        """The value of one of this source's watermarks, stored with an earlier batch."""
        ...

    def stopping(self) -> bool:
        """Whether the daemon is shutting down (a long poll should stop between batches)."""
        ...


@runtime_checkable
class PullSource(Protocol):
    """A source the daemon polls (demo, file, sql, prometheus)."""

    detector: str
    poll_interval_s: float

    def poll(self) -> int:
        """Fetch what is new, ingest it, advance the watermark; returns records accepted."""
        ...
