"""`vigil maintenance add/list/remove`: time ranges whose records are neither flagged nor trained on."""

from __future__ import annotations

from pathlib import Path

import click

from detector.cli.common import config_option, load, parse_time, review_service, table
from detector.errors import InvalidWindowError

__all__ = ["maintenance"]


@click.group()
def maintenance() -> None:
    """Maintenance windows: time ranges whose records are neither flagged nor trained on."""


@maintenance.command("add")
@click.argument("detector")
@click.option("--start", required=True, help="ISO 8601 time (a time without zone is UTC).")
@click.option("--end", required=True, help="ISO 8601 time.")
@click.option("--reason", help="What is going on.")
@config_option
def maintenance_add(detector: str, start: str, end: str, reason: str | None, config_path: Path) -> None:
    """Declare a maintenance window for DETECTOR."""
    config = load(config_path)
    if detector not in config.detectors:
        raise click.BadParameter(f"unknown detector {detector!r}", param_hint="DETECTOR")
    try:
        window = review_service(config_path).add_window(detector, parse_time(start, "--start"),
                                                        parse_time(end, "--end"), reason)
    except InvalidWindowError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"maintenance window {window.id}: {window.start.isoformat()} .. {window.end.isoformat()}")


@maintenance.command("list")
@click.argument("detector")
@config_option
def maintenance_list(detector: str, config_path: Path) -> None:
    """The maintenance windows of DETECTOR."""
    windows = review_service(config_path).windows(detector)
    rows = [[w.id, w.start.isoformat(), w.end.isoformat(), w.reason or ""] for w in windows]
    click.echo(table(["id", "start", "end", "reason"], rows) if rows else "no maintenance windows")


@maintenance.command("remove")
@click.argument("detector")
@click.argument("window_id", type=int)
@config_option
def maintenance_remove(detector: str, window_id: int, config_path: Path) -> None:
    """Remove maintenance window WINDOW_ID of DETECTOR."""
    review_service(config_path).delete_window(detector, window_id)
    click.echo(f"removed maintenance window {window_id}")
