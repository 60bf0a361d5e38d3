"""`vigil status`: per detector, records by state, outliers, the active model and the last training run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from detector.cli.common import config_option, load, table

__all__ = ["status"]


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(config_path: Path, as_json: bool) -> None:
    """Per detector: records by state, outliers, active model, last training run."""
    from prometheus_client import CollectorRegistry

    from detector.metrics import Metrics
    from detector.service import Vigil
    from detector.store.db import open_repository

    config = load(config_path)
    vigil = Vigil(config, open_repository(config.store_url), Metrics(CollectorRegistry()))
    report = vigil.status()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    rows = []
    for name, d in report["detectors"].items():
        model, run_ = d["model"], d["last_training"]
        rows.append([
            name, d["source"], d["records"]["pending"], d["records"]["scored"], d["records"]["rejected"],
            d["outliers"], f"v{model['version']} ({model['trained_at'][:19]})" if model else "none",
            f"{run_['result']} {run_['started_at'][:19]}" if run_ else "never",
        ])
    click.echo(table(["detector", "source", "pending", "scored", "rejected", "outliers", "model",
                       "last training"], rows))
    for name, d in report["detectors"].items():
        if d.get("waiting"):
            click.echo(f"{name}: {d['waiting']}")
