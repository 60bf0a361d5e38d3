"""Explore commands: `vigil report`, an HTML page on a detector's model."""

from __future__ import annotations

from pathlib import Path

import click

from detector.cli_common import config_option, load, prepare_torch

__all__ = ["report"]


@click.command("report")
@click.argument("detector")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (default: vigil-report-DETECTOR.html).")
@click.option("--records", default=5000, show_default=True, type=click.IntRange(10, 1_000_000),
              help="Newest scored records in the score histogram and the latent map.")
@click.option("--top", default=6, show_default=True, type=click.IntRange(0, 100),
              help="Outliers shown next to their reconstructions.")
@config_option
def report(detector: str, output: Path | None, records: int, top: int, config_path: Path) -> None:
    """Write a self-contained HTML report on DETECTOR's active model: training loss, score histogram with the
    threshold, latent space and the top outliers next to their reconstructions (no network needed to view it)."""
    from detector.report import write_report

    config = load(config_path)
    prepare_torch(config.daemon.torch_threads)
    path = output or Path(f"vigil-report-{detector}.html")
    data = write_report(config, detector, path, records, top)
    flagged = sum(1 for _, _, f in data.recent if f)
    click.echo(f"{path}: {detector} model v{data.model.version}, {len(data.recent)} recent scores "
               f"({flagged} outliers), {len(data.top)} top outliers")

