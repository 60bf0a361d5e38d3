"""The demo detector of the shipped config.toml, scaled down for tests, and a clock its source reads."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from detector.config import DemoSourceConfig
from detector.daemon import Runtime
from tests.support.config import detector, heading, write_config_file

__all__ = ["NOW", "REPO", "SHIPPED", "FakeClock", "demo_config_text", "demo_source_config", "write_demo_config"]

REPO = Path(__file__).resolve().parents[2]
SHIPPED = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))["detectors"]["demo"]
NOW = datetime(2025, 3, 5, 12, 0, tzinfo=UTC)       # a Wednesday, on the minute


class FakeClock:
    """The wall clock the source reads; tests move it by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def demo_config_text(history: str, hosts: int, **model: Any) -> str:
    """A demo detector scaled down from the shipped config.toml (same features, model, threshold, training)."""
    return detector("demo", SHIPPED["features"], source={**SHIPPED["source"], "history": history, "hosts": hosts},
                    key_field=SHIPPED["key_field"], model={**SHIPPED["model"], "device": "cpu", **model},
                    threshold=SHIPPED["threshold"], training=SHIPPED["training"])


def write_demo_config(directory: Path, history: str = "12h", hosts: int = 2, **model: Any) -> Path:
    """`directory`/config.toml: the default heading and `demo_config_text(history, hosts, **model)`."""
    return write_config_file(directory / "config.toml", heading(), demo_config_text(history, hosts, **model))


def demo_source_config(runtime: Runtime) -> DemoSourceConfig:
    cfg = runtime.config.detectors["demo"].source
    assert isinstance(cfg, DemoSourceConfig)
    return cfg
