"""Pieces shared by the command-line modules: the --config option, config loading, detector names, times,
tables and their cells."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from detector.allocator import tune_malloc
from detector.config import Config, DaemonConfig, DetectorConfig, load_config
from detector.errors import UnknownDetectorError
from detector.records import parse_timestamp
from detector.review import ReviewService

__all__ = ["DetectorCommand", "DetectorGroup", "config_option", "known_detector", "load", "parse_time",
           "prepare_torch", "review_service", "short", "table"]

F = TypeVar("F", bound=Callable[..., Any])


def config_option(func: F) -> F:
    option = click.option("--config", "config_path", type=click.Path(path_type=Path),
                          default=Path("config.toml"), show_default=True, envvar="VIGIL_CONFIG",
                          help="Configuration file.")
    return option(func)


def load(path: Path) -> Config:
    from detector.scheduler import check_schedules

    config = load_config(path)
    check_schedules(config, str(path))
    return config


def prepare_torch(daemon: DaemonConfig) -> None:
    """Process settings for torch work: the `daemon` section's thread count and malloc cache."""
    tune_malloc(daemon.malloc_cache_mib)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if daemon.torch_threads > 0:
        torch.set_num_threads(daemon.torch_threads)


class DetectorCommand(click.Command):
    """A command that takes a detector name: an unknown one is a usage error (exit status 2) that names it
    and the configured detectors, whichever command and whichever step of it finds out."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UnknownDetectorError as exc:
            param = next((p for p in self.params if p.name == "detector"), None)
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


class DetectorGroup(click.Group):
    """A command group whose commands are `DetectorCommand`s."""

    command_class = DetectorCommand


def short(value: Any) -> str:
    """A value for a table cell: none as '-', whole numbers (2.0, 39340.0) as integers, numbers of 1,000
    and over to the unit, other floats to 4 significant digits; never an exponent between 1e-4 and 1e15."""
    if value is None:
        return "-"
    if not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    if abs(value) >= 1e15 or (value != 0 and abs(value) < 1e-4):
        return f"{value:.4g}"
    if value.is_integer() or abs(value) >= 1000:
        return str(round(value))
    return f"{value:.4g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def known_detector(detectors: Mapping[str, DetectorConfig], name: str) -> DetectorConfig:
    """The config of detector `name`; `UnknownDetectorError` when it is not configured."""
    if name not in detectors:
        raise UnknownDetectorError(name, list(detectors))
    return detectors[name]


def parse_time(value: str, option: str) -> datetime:
    """An ISO 8601 time (UTC when it names no zone) or Unix seconds given to `option`."""
    try:
        return parse_timestamp(value, datetime.now().astimezone())
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time or Unix seconds ({exc})",
                                 param_hint=option) from None


def review_service(config_path: Path) -> ReviewService:
    """The review service on the configured store (the same one the API uses)."""
    from detector.store.db import open_repository

    config = load(config_path)
    return ReviewService(lambda: config, open_repository(config.store_url).reviews)
