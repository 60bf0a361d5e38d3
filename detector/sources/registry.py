"""Which class reads each `source.type` of the config: the one place a new source is registered."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from detector.config import Config, DetectorConfig
from detector.sources.base import PullSource, Sink
from detector.sources.demo import DemoSource
from detector.sources.files import FileSource
from detector.sources.prometheus import PrometheusSource
from detector.sources.sql import SqlSource

__all__ = ["PULL_SOURCES", "PUSH_SOURCES", "pull_source", "pull_sources"]

# type -> the class the scheduler polls, built from the detector's [source] section and its sink
PULL_SOURCES: Mapping[str, Callable[[Any, Sink], PullSource]] = {
    "demo": DemoSource,
    "file": FileSource,
    "prometheus": PrometheusSource,
    "sql": SqlSource,
}
# types whose records are pushed to the API (detector.sources.http.HttpSource, detector.sources.otlp.OtlpSource)
PUSH_SOURCES = frozenset({"http", "otlp"})


def pull_source(det: DetectorConfig, sink: Sink) -> PullSource | None:
    """The poller for a detector's source, or None for a push source."""
    factory = PULL_SOURCES.get(det.source.type)
    return None if factory is None else factory(det.source, sink)


def pull_sources(config: Config, sink: Callable[[str, str], Sink]) -> list[PullSource]:
    """A poller for every detector of `config` whose source pulls; `sink(name, type)` gives each its sink."""
    pollers = [pull_source(det, sink(name, det.source.type)) for name, det in config.detectors.items()]
    return [p for p in pollers if p is not None]
