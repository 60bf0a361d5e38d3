"""Explore commands: `vigil report` (an HTML page on a detector's model) and `vigil tune` (compare model shapes)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from detector.cli_common import config_option, load, prepare_torch

__all__ = ["report", "tune"]


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
    prepare_torch(config.daemon)
    path = output or Path(f"vigil-report-{detector}.html")
    data = write_report(config, detector, path, records, top)
    flagged = sum(1 for _, _, f in data.recent if f)
    click.echo(f"{path}: {detector} model v{data.model.version}, {len(data.recent)} recent scores "
               f"({flagged} outliers), {len(data.top)} top outliers")


@click.command("tune")
@click.argument("detector")
@click.option("--depths", default="1,2,3", show_default=True, help="Hidden layer counts to try.")
@click.option("--latents", default="2,4,8", show_default=True, help="Latent sizes to try.")
@click.option("--variants", default=None,
              help="Autoencoder variants to try at the configured depth and latent size (default: all known).")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1, 10_000),
              help="Most epochs per candidate (at most the configured epochs).")
@click.option("--max-rows", default=20_000, show_default=True, type=click.IntRange(100, 10_000_000),
              help="Newest records of the training window used.")
@click.option("--write", "write_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the winner as a [detectors.NAME.model] TOML snippet here.")
@config_option
def tune(detector: str, depths: str, latents: str, variants: str | None, epochs: int, max_rows: int,
         write_path: Path | None, config_path: Path) -> None:
    """Compare model shapes (depth, latent size, variant) on DETECTOR's current training window, by held-out
    reconstruction error and, when there are reviewed outliers, by how well they separate; print a ranked table
    and a config snippet for the winner."""
    from detector.logs import setup_logging
    from detector.tune import CandidateResult, Grid, model_snippet, ranked_table, run_tuning

    config = load(config_path)
    setup_logging("warning", "text", sys.stderr)
    prepare_torch(config.daemon)
    try:
        grid = Grid.parse(config, detector, depths, latents, variants)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    done = 0

    def progress(candidate: CandidateResult) -> None:
        nonlocal done
        done += 1
        click.echo(f"[{done}/{len(grid.candidates)}] {candidate.candidate.label}: {candidate.seconds:.1f} s"
                   + (f" ({candidate.error})" if candidate.error else ""), err=True)

    result = run_tuning(config, detector, grid, epochs=epochs, max_rows=max_rows, on_candidate=progress)
    click.echo(ranked_table(result))
    snippet = model_snippet(config, detector, result.ranked[0].candidate)
    click.echo("\n" + snippet, nl=False)
    if write_path is not None:
        write_path.write_text(snippet, encoding="utf-8")
        click.echo(f"\nwritten to {write_path}", err=True)
