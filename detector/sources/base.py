"""What a pulling source is: something the scheduler polls, which ingests through the daemon."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["PullSource"]


@runtime_checkable
class PullSource(Protocol):
    """A source the daemon polls (demo, file). Push sources (http) need no poller."""

    detector: str
    poll_interval_s: float

    def poll(self) -> int:
        """Fetch what is new, ingest it, advance the watermark; returns records accepted."""
        ...
