"""Pieces shared by the command-line modules: the --config option, config loading, tables."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from detector.allocator import tune_malloc
from detector.config import Config, DaemonConfig, load_config

__all__ = ["config_option", "load", "prepare_torch", "short", "table"]

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


def short(value: Any) -> str:
    """A value for a table cell: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


