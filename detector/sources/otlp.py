"""The otlp source: OpenTelemetry metric exports (OTLP/HTTP, protobuf or JSON) turned into records.

The API reads the body of `POST /v1/detectors/NAME/otlp/v1/metrics` (what an OTLP/HTTP exporter or the
Collector's `otlphttp` exporter sends) and hands it here. The rule from data points to records:

- Gauge and Sum data points are used (a Sum as its value: export delta temporality, or use the
  Collector's `cumulativetodelta` processor, to watch a rate); histogram, exponential histogram and
  summary points are refused, counted as rejected data points.
- The record key is the values of `key_attributes`, looked up in the point's attributes and then its
  resource's, joined by "/" (no key when none is configured or none is present).
- The feature a point feeds is its metric name; the point's other attributes (not key attributes, not
  `ignore_attributes`) select among same-named series: `name{a=x,b=y}`, attributes sorted by name.
- Points whose times fall in one `align` step (and share a key) form one record, stamped with the start
  of that step. Points of metrics the detector has no feature for are not stored; the answer says so.

Each record then goes through the same validation, rejection reasons, limits and token as the JSON
ingest. The answer is an `ExportMetricsServiceResponse` in the request's encoding, whose partial success
counts the data points of refused records.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, NumberDataPoint

from detector.config import HttpConfig
from detector.config.sources import OtlpSourceConfig
from detector.sources.base import Sink

__all__ = ["PROTOBUF", "OtlpReply", "OtlpSource", "records_from_export"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_SHOWN_PROBLEMS = 5
_RAW_SHOWN = 2000


class OtlpBodyError(ValueError):
    """A body that is not an OTLP metrics export this source can read."""

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class OtlpReply:
    """The HTTP status, body and content type answering one export."""

    status: int
    body: bytes
    content_type: str


@dataclass(slots=True)
class Converted:
    """An export as records: each record with the data points it holds, and what was left out."""

    records: list[dict[str, Any]] = field(default_factory=list)
    points: list[int] = field(default_factory=list)
    unsupported: Counter[str] = field(default_factory=Counter)     # metric name -> points refused
    unused: Counter[str] = field(default_factory=Counter)          # metric name -> points with no feature


def _scalar(value: AnyValue) -> str | None:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        scalar = getattr(value, kind)
        return str(scalar).lower() if kind == "bool_value" else str(scalar)
    return None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        text = _scalar(pair.value)
        if text is not None:
            out[pair.key] = text
    return out


def _points(metric: Metric) -> list[NumberDataPoint] | None:
    kind = metric.WhichOneof("data")
    if kind == "gauge":
        return list(metric.gauge.data_points)
    if kind == "sum":
        return list(metric.sum.data_points)
    return None


def _feature(name: str, attributes: dict[str, str], skip: set[str]) -> str:
    rest = sorted((k, v) for k, v in attributes.items() if k not in skip)
    return name if not rest else name + "{" + ",".join(f"{k}={v}" for k, v in rest) + "}"


def _value(point: NumberDataPoint) -> float:
    return float(point.as_int) if point.WhichOneof("value") == "as_int" else float(point.as_double)


def records_from_export(request: ExportMetricsServiceRequest, cfg: OtlpSourceConfig, features: set[str],
                        ts_field: str, key_field: str) -> Converted:
    """Group an export's Gauge and Sum points into records by (key, `align` step), following the module's rule."""
    out = Converted()
    skip = set(cfg.key_attributes) | set(cfg.ignore_attributes)
    step_ns = max(1, round(cfg.align * 1e9))
    rows: dict[tuple[str | None, int], dict[str, Any]] = {}
    counts: defaultdict[tuple[str | None, int], int] = defaultdict(int)
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = _points(metric)
                if points is None:
                    out.unsupported[metric.name] += _point_count(metric)
                    continue
                for point in points:
                    attributes = _attributes(point.attributes)
                    name = _feature(metric.name, attributes, skip)
                    if name not in features:
                        out.unused[name] += 1
                        continue
                    parts = [attributes.get(a, resource.get(a)) for a in cfg.key_attributes]
                    key = "/".join(p for p in parts if p is not None) or None
                    slot = (key, point.time_unix_nano // step_ns * step_ns)
                    row = rows.setdefault(slot, {})
                    row[name] = _value(point)
                    counts[slot] += 1
    for (key, t_ns), fields in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0] or "")):
        record: dict[str, Any] = {ts_field: datetime.fromtimestamp(t_ns / 1e9, UTC).isoformat(), **fields}
        if key is not None:
            record[key_field] = key
        out.records.append(record)
        out.points.append(counts[(key, t_ns)])
    return out


def _point_count(metric: Metric) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip or deflate), never more than `limit` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise OtlpBodyError("malformed", f"unsupported Content-Encoding {encoding!r} (use gzip or none)", 415)
    decompressor = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = decompressor.decompress(body, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise OtlpBodyError("malformed", f"body is not valid {encoding}: {exc}") from None
    if len(data) > limit:
        raise OtlpBodyError("too_large", f"decompressed body larger than max_body_bytes={limit}", 413)
    return data


def parse_export(body: bytes, content_type: str) -> tuple[ExportMetricsServiceRequest, str]:
    """The export in `body` and the encoding to answer in (protobuf or JSON)."""
    media = content_type.split(";", 1)[0].strip().lower()
    request = ExportMetricsServiceRequest()
    if media in (PROTOBUF, "application/protobuf", ""):
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeWarning) as exc:
            raise OtlpBodyError("malformed", f"body is not an OTLP ExportMetricsServiceRequest: {exc}") from None
        return request, PROTOBUF
    if media == JSON:
        try:
            json_format.Parse(body.decode("utf-8"), request, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise OtlpBodyError("malformed", f"body is not OTLP JSON: {exc}") from None
        return request, JSON
    raise OtlpBodyError("malformed", f"unsupported Content-Type {media!r}: send {PROTOBUF} or {JSON}", 415)


def _encode(response: ExportMetricsServiceResponse, encoding: str) -> bytes:
    if encoding == JSON:
        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


class OtlpSource:
    """A push source: `receive` takes one OTLP/HTTP metrics export; there is nothing to poll."""

    def __init__(self, cfg: OtlpSourceConfig, sink: Sink, limits: HttpConfig, features: Iterable[str]) -> None:
        self.detector = sink.detector
        self._cfg = cfg
        self._sink = sink
        self._limits = limits
        self._features = set(features)

    def _refused(self, exc: OtlpBodyError, body: bytes) -> OtlpReply:
        raw = None if exc.reason != "malformed" else body[:_RAW_SHOWN].decode("utf-8", "replace")
        rejection = self._sink.reject_whole(exc.reason, exc.message, "otlp", raw)
        payload = json.dumps({"error": rejection.message, "accepted": 0,
                                          "rejected": [rejection.to_dict()]}).encode()
        return OtlpReply(exc.status, payload, JSON)

    def receive(self, body: bytes | None, content_type: str, content_encoding: str = "") -> OtlpReply:
        """Ingest one export; None stands for a body over `max_body_bytes` (not read to its end)."""
        limits = self._limits
        if body is None:
            return self._refused(OtlpBodyError("too_large", f"body larger than max_body_bytes="
                                                            f"{limits.max_body_bytes}", 413), b"")
        try:
            request, encoding = parse_export(_decompress(body, content_encoding, limits.max_body_bytes),
                                             content_type)
        except OtlpBodyError as exc:
            return self._refused(exc, body)
        converted = records_from_export(request, self._cfg, self._features, self._sink.ts_field,
                                        self._sink.key_field)
        if len(converted.records) > limits.max_batch_records:
            return self._refused(OtlpBodyError("too_many_records", f"{len(converted.records)} records in one "
                                               f"export; max_batch_records={limits.max_batch_records}", 413), b"")
        result = self._sink.ingest(converted.records, origin="otlp")
        rejected_points = sum(converted.points[r.index] for r in result.rejected if r.index is not None)
        rejected_points += sum(converted.unsupported.values())
        problems = [f"record {r.index}: {r.field + ': ' if r.field else ''}{r.message}" for r in result.rejected]
        problems += [f"{n} {name} points: only gauges and sums are read" for name, n in converted.unsupported.items()]
        if converted.unused:
            names = ", ".join(sorted(converted.unused)[:_SHOWN_PROBLEMS])
            problems.append(f"{sum(converted.unused.values())} points of series this detector has no feature "
                            f"for (not stored): {names}")
        response = ExportMetricsServiceResponse()
        if problems:
            response.partial_success.rejected_data_points = rejected_points
            more = len(problems) - _SHOWN_PROBLEMS
            response.partial_success.error_message = "; ".join(problems[:_SHOWN_PROBLEMS]) + (
                f"; and {more} more" if more > 0 else "")
        return OtlpReply(200, _encode(response, encoding), encoding)
