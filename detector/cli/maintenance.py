"""`vigil maintenance add/list/remove`: time ranges whose records are neither flagged nor trained on."""

from __future__ import annotations

import json
from pathlib import Path

import click

from detector.cli.common import DetectorGroup, config_option, known_detector, load, parse_time, review_service, table
from detector.errors import InvalidWindowError

__all__ = ["maintenance"]


@click.group(cls=DetectorGroup)
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
    known_detector(load(config_path).detectors, detector)
    try:
        window = review_service(config_path).add_window(detector, parse_time(start, "--start"),
                                                        parse_time(end, "--end"), reason)
    except InvalidWindowError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"maintenance window {window.id}: {window.start.isoformat()} .. {window.end.isoformat()}")


@maintenance.command("list")
@click.argument("detector")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@config_option
def maintenance_list(detector: str, as_json: bool, config_path: Path) -> None:
    """The maintenance windows of DETECTOR."""
    service = review_service(config_path)
    service.check_detector(detector)
    windows = service.windows(detector)
    if as_json:
        for w in windows:
            click.echo(json.dumps(w.to_dict()))
        return
    rows = [[w.id, w.start.isoformat(), w.end.isoformat(), w.reason or ""] for w in windows]
    click.echo(table(["id", "start", "end", "reason"], rows) if rows else "no maintenance windows")


@maintenance.command("remove")
@click.argument("detector")
@click.argument("window_id", type=int)
@config_option
def maintenance_remove(detector: str, window_id: int, config_path: Path) -> None:
    """Remove maintenance window WINDOW_ID of DETECTOR."""
    service = review_service(config_path)
    service.check_detector(detector)
    service.delete_window(detector, window_id)
    click.echo(f"removed maintenance window {window_id}")
