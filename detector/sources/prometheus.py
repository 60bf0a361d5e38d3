"""The Prometheus source: PromQL expressions queried with query_range, one record per step (and key)."""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from detector.config.sources import PrometheusSourceConfig
from detector.errors import SourceError
from detector.sources.base import Sink

__all__ = ["PrometheusSource", "query_range", "series_key"]

logger = logging.getLogger(__name__)

_WATERMARK = "prometheus"
_MAX_POINTS = 10_000    # Prometheus refuses ranges of more than 11,000 points per series


def series_key(labels: dict[str, str], key_label: str | None, several: bool) -> str | None:
    """The record key of a series: its `key_label` value, else its label set when a query returns several."""
    if key_label is not None:
        return labels.get(key_label)
    if not several:
        return None
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def query_range(url: str, expr: str, start: float, end: float, step: float, timeout: float) -> list[dict[str, Any]]:
    """The `result` of /api/v1/query_range (a matrix); SourceError when Prometheus fails or refuses."""
    body = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                   "step": f"{step:g}"}).encode()
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/query_range", data=body,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise SourceError("prometheus", f"{url}: query {expr!r} failed with HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SourceError("prometheus", f"{url}: cannot query {expr!r}: {exc}") from exc
    if payload.get("status") != "success":
        raise SourceError("prometheus", f"{url}: query {expr!r}: {payload.get('error', 'no success status')}")
    result = payload.get("data", {}).get("result", [])
    return result if isinstance(result, list) else []


class PrometheusSource:
    """Polls Prometheus for each step since its watermark; the first poll back-fills `backfill`.

    Steps newer than `lag` are left for later (their samples may still arrive). Each chunk of
    steps is stored in one transaction together with the watermark, so a restart or an outage
    leaves no gap and no duplicate: the next poll starts where the last stored chunk ended.
    """

    def __init__(self, cfg: PrometheusSourceConfig, sink: Sink, clock: Callable[[], datetime] | None = None) -> None:
        self.detector = sink.detector
        self.poll_interval_s = cfg.poll_interval
        self._cfg = cfg
        self._sink = sink
        self._clock = clock or (lambda: datetime.now(UTC))

    def _align(self, t: datetime) -> datetime:
        step = self._cfg.step
        return datetime.fromtimestamp(math.floor(t.timestamp() / step) * step, UTC)

    def _records(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        cfg = self._cfg
        rows: dict[tuple[str | None, float], dict[str, Any]] = {}
        for field, expr in cfg.queries.items():
            result = query_range(cfg.url, expr, start.timestamp(), end.timestamp(), cfg.step, cfg.timeout)
            several = len(result) > 1
            for series in result:
                key = series_key(series.get("metric", {}), cfg.key_label, several)
                for t, text in series.get("values", []):
                    row = rows.setdefault((key, float(t)), {})
                    row[field] = float(text)   # "NaN"/"+Inf" stay: validation rejects them, naming the field
        records = []
        for (key, t), fields in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0] or "")):
            record: dict[str, Any] = {self._sink.ts_field: t, **fields}
            if key is not None:
                record[self._sink.key_field] = key
            records.append(record)
        return records

    def poll(self) -> int:
        cfg = self._cfg
        step = timedelta(seconds=cfg.step)
        mark = self._sink.watermark(_WATERMARK)
        end = self._align(self._clock() - timedelta(seconds=cfg.lag))
        start = datetime.fromisoformat(mark) if mark else self._align(end - timedelta(seconds=cfg.backfill))
        accepted = 0
        while start <= end and not self._sink.stopping():
            chunk_end = min(end, start + step * (_MAX_POINTS - 1))
            records = self._records(start, chunk_end)
            next_start = chunk_end + step
            result = self._sink.ingest(records, origin=cfg.url, watermark=(_WATERMARK, next_start.isoformat()))
            accepted += result.accepted
            start = next_start
        if accepted:
            logger.info("prometheus records read", extra={"detector": self.detector, "records": accepted,
                                                          "until": end.isoformat()})
        return accepted
