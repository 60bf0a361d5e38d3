"""The built-in demo source: synthetic server metrics with injected incidents, backfilled then live."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from detector.config.sources import DemoSourceConfig
from detector.sources.base import Sink
from detector.sources.demo_data import DemoRecord, DemoSettings, generate

__all__ = ["DEMO_FEATURES", "DemoSource"]

logger = logging.getLogger(__name__)

DEMO_FEATURES = {
    "request_rate": "numeric",
    "p50_latency_ms": "numeric",
    "p99_latency_ms": "numeric",
    "error_rate": "numeric",
    "cpu_pct": "numeric",
    "memory_pct": "numeric",
    "region": "categorical",
    "status_class": "categorical",
}
_WATERMARK = "demo"
_CHUNK = timedelta(days=7)   # the first backfill lands in one transaction, so the first model sees it all


def _raw(record: DemoRecord, ts_field: str, key_field: str) -> dict[str, Any]:
    raw: dict[str, Any] = {ts_field: record.ts, key_field: record.key, **record.fields}
    raw["incident"] = record.incident or "none"
    return raw


class DemoSource:
    """Backfills `history` of simulated metrics at first start, then emits new steps as time passes.

    Simulated time advances `speed` times faster than the wall clock from the moment the source
    first ran, so a newcomer sees incidents within minutes. The watermark (the simulated time
    reached) is stored with each batch, so a restart resumes without gaps or duplicates.
    """

    def __init__(self, cfg: DemoSourceConfig, sink: Sink, clock: Any = None) -> None:
        self.detector = sink.detector
        self.poll_interval_s = cfg.poll_interval
        self._cfg = cfg
        self._sink = sink
        self._settings = DemoSettings(hosts=cfg.hosts, step_s=int(cfg.step), seed=cfg.seed,
                                      incident_rate=cfg.incident_rate)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._anchor: tuple[datetime, datetime] | None = None   # (wall time, simulated time) at first poll

    def _simulated_now(self) -> datetime:
        wall = self._clock()
        if self._anchor is None:
            return wall
        wall0, sim0 = self._anchor
        return sim0 + (wall - wall0) * self._cfg.speed

    def poll(self) -> int:
        mark = self._sink.watermark(_WATERMARK)
        if mark is None:
            start = self._clock() - timedelta(seconds=self._cfg.history)
        else:
            # after a long stop, resume at most `history` back rather than replaying months
            start = max(datetime.fromisoformat(mark), self._clock() - timedelta(seconds=self._cfg.history))
        if self._anchor is None:
            now = self._clock()
            self._anchor = (now, max(now, start))
        end = self._simulated_now()
        ts_field, key_field = self._sink.ts_field, self._sink.key_field
        accepted = 0
        while start < end and not self._sink.stopping():
            stop = min(end, start + _CHUNK)
            records = generate(start, stop, self._settings)
            raws = [_raw(r, ts_field, key_field) for r in records]
            result = self._sink.ingest(raws, origin="demo", watermark=(_WATERMARK, stop.isoformat()))
            accepted += result.accepted
            start = stop
        if accepted:
            logger.info("demo records generated", extra={"detector": self.detector, "records": accepted,
                                                         "simulated_until": end.isoformat()})
        return accepted
