"""The http source: records pushed to `POST /v1/detectors/NAME/records` (JSON array, one object, or NDJSON).

The API reads the body (up to `http.max_body_bytes`) and hands it here; this source applies the batch
limits, parses the body and ingests it through its sink like every other source. A body refused whole
(too large, not JSON, too many records) is kept in the rejects table with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from detector.config import HttpConfig, HttpSourceConfig
from detector.records import parse_json_body
from detector.sources.base import Sink

__all__ = ["HttpReply", "HttpSource"]

_RAW_SHOWN = 2000     # bytes of a malformed body kept with its rejection


@dataclass(frozen=True, slots=True)
class HttpReply:
    """The HTTP status and JSON body answering one pushed batch."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


class HttpSource:
    """A push source: `receive` takes one request body; there is nothing to poll."""

    def __init__(self, cfg: HttpSourceConfig, sink: Sink, limits: HttpConfig) -> None:
        self.detector = sink.detector
        self._cfg = cfg
        self._sink = sink
        self._limits = limits

    def _refused(self, status: int, reason: str, message: str, raw: str | None = None) -> HttpReply:
        rejection = self._sink.reject_whole(reason, message, None, raw)
        return HttpReply(status, {"error": rejection.message, "accepted": 0, "rejected": [rejection.to_dict()]})

    def receive(self, body: bytes | None, content_type: str) -> HttpReply:
        """Ingest one request body; None stands for a body over `max_body_bytes` (not read to its end)."""
        limits = self._limits
        if body is None:
            return self._refused(413, "too_large", f"body larger than max_body_bytes={limits.max_body_bytes}")
        try:
            raws = parse_json_body(body, content_type)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._refused(400, "malformed", f"body is not valid JSON: {exc}",
                                 body[:_RAW_SHOWN].decode("utf-8", "replace"))
        if len(raws) > limits.max_batch_records:
            return self._refused(413, "too_many_records", f"{len(raws)} records in one request; "
                                                          f"max_batch_records={limits.max_batch_records}")
        result = self._sink.ingest(raws, origin="http")
        out: dict[str, Any] = {"accepted": result.accepted, "rejected": [r.to_dict() for r in result.rejected]}
        if result.rejected:
            out["error"] = f"{len(result.rejected)} of {len(raws)} records rejected; the others were stored"
            return HttpReply(422, out)
        return HttpReply(200, out)
