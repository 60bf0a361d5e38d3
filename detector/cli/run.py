"""`vigil run` (the daemon), `vigil config check` and `vigil db upgrade`: running and setting up."""

from __future__ import annotations

import gc
from pathlib import Path

import click

from detector.cli.common import config_option, load, prepare_torch
from detector.config import require_detectors

__all__ = ["config_group", "db", "run"]


@click.command()
@config_option
@click.option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto", show_default=True,
              help="json for journald, text for a terminal; auto picks by whether stdout is a terminal.")
def run(config_path: Path, log_format: str) -> None:
    """Run the daemon: sources, scoring, training, and the HTTP API."""
    from detector.logs import setup_logging

    config = load(config_path)
    require_detectors(config, config_path)
    setup_logging(config.daemon.log_level, log_format)
    from detector.api.sockets import listen

    # The API's port first: when it is taken, the daemon says so and exits before it opens the store or
    # starts a job (uvicorn found out only after the jobs had started, and then waited for them).
    sockets = listen(config.http) if config.http.enabled else None
    prepare_torch(config.daemon)
    from detector.api.server import serve
    from detector.daemon import build_runtime

    runtime = build_runtime(config)
    # Everything loaded so far (modules, models) lives as long as the process: moved out of the collector's
    # reach, it is no longer scanned each time a batch of records allocates its many small dicts
    # (claiming 5,000 records took about 2.8 times as long with it in reach).
    gc.freeze()
    serve(runtime, config_path, sockets)


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@config_option
def db_upgrade(config_path: Path) -> None:
    """Apply pending schema migrations to the configured store."""
    from detector.store.db import open_engine, upgrade

    config = load(config_path)
    revision = upgrade(open_engine(config.store_url))
    click.echo(f"database at revision {revision}")


@click.group("config")
def config_group() -> None:
    """Configuration."""


@config_group.command("check")
@config_option
def config_check(config_path: Path) -> None:
    """Validate the configuration file without starting anything (a file without detectors is refused; an
    API reachable beyond this machine is warned about on stderr)."""
    config = load(config_path)
    require_detectors(config, config_path)
    names = ", ".join(f"{n} ({d.source.type})" for n, d in config.detectors.items())
    click.echo(f"{config_path}: ok; detectors: {names}; store: {config.store_url}")
    for warning in config.http.exposure_warnings():
        click.echo(f"warning: {warning}", err=True)
