"""The `vigil` command line: run the daemon, inspect status, outliers and models, train, score."""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from detector import __version__
from detector.cli_common import config_option, load, prepare_torch, short, table
from detector.cli_data import check_data, models_promote, models_rollback, models_show
from detector.cli_evaluate import evaluate
from detector.cli_explore import report, tune
from detector.cli_review import maintenance, outliers_export, outliers_review, outliers_show
from detector.errors import ConfigError, VigilError

__all__ = ["main"]

logger = logging.getLogger(__name__)

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vigil")
def cli() -> None:
    """Vigil: an anomaly-detection monitoring daemon.

    It learns what normal records look like with an autoencoder, scores every new record by
    reconstruction error, and stores and explains the outliers.
    """


@cli.command()
@config_option
@click.option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto", show_default=True,
              help="json for journald, text for a terminal; auto picks by whether stdout is a terminal.")
def run(config_path: Path, log_format: str) -> None:
    """Run the daemon: sources, scoring, training, and the HTTP API."""
    from detector.logs import setup_logging

    config = load(config_path)
    setup_logging(config.daemon.log_level, log_format)
    prepare_torch(config.daemon)
    from detector.daemon import build_runtime
    from detector.server import serve

    runtime = build_runtime(config)
    # Everything loaded so far (modules, models) lives as long as the process: moved out of the collector's
    # reach, it is no longer scanned each time a batch of records allocates its many small dicts
    # (claiming 5,000 records took about 2.8 times as long with it in reach).
    gc.freeze()
    serve(runtime, config_path)


@cli.command()
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


@cli.command()
@click.argument("detector")
@config_option
def train(detector: str, config_path: Path) -> None:
    """Train DETECTOR now on its current window and make the model active."""
    from prometheus_client import CollectorRegistry

    from detector.logs import setup_logging
    from detector.metrics import Metrics
    from detector.service import Vigil
    from detector.store.db import open_repository
    from detector.trainer import Trainer

    config = load(config_path)
    setup_logging("warning", "text", sys.stderr)
    prepare_torch(config.daemon)
    vigil = Vigil(config, open_repository(config.store_url), Metrics(CollectorRegistry()))
    det = vigil.detector(detector)
    with click.progressbar(length=det.model.epochs, label=f"training {detector}",
                           show_pos=True, file=sys.stderr) as bar:
        def on_epoch(stats: Any) -> None:
            bar.label = f"training {detector} (val loss {stats.val_loss:.4g})"
            bar.update(1)

        outcome = Trainer(vigil).train(detector, "manual", on_epoch=on_epoch)
        bar.update(det.model.epochs)
    click.echo(f"{outcome.result}: {outcome.message}")
    if outcome.result != "success":
        sys.exit(1)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--detector", "-d", required=True, help="Detector whose active model scores the file.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
@click.option("--outliers-only", is_flag=True, help="Only the records above the threshold.")
@config_option
def score(file: Path, detector: str, fmt: str, output: Path | None, outliers_only: bool,
          config_path: Path) -> None:
    """Score FILE (CSV, Parquet or NDJSON) offline with the active model of a detector."""
    from detector.offline import score_file

    config = load(config_path)
    prepare_torch(config.daemon)
    frame, summary = score_file(config, detector, file)
    if outliers_only:
        frame = frame[frame["is_outlier"]]
    text = frame.to_csv(index=False) if fmt == "csv" else frame.to_string(index=False, max_rows=None) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)
    click.echo(summary, err=True)


@cli.group()
def outliers() -> None:
    """Flagged outliers."""


@outliers.command("list")
@config_option
@click.option("--detector", "-d", help="Only this detector.")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def outliers_list(config_path: Path, detector: str | None, limit: int, as_json: bool) -> None:
    """Newest outliers: time, key, score against threshold, and the top contributing features."""
    from detector.store.db import open_repository

    config = load(config_path)
    if detector and detector not in config.detectors:
        raise click.BadParameter(f"unknown detector {detector!r}", param_hint="--detector")
    rows = open_repository(config.store_url).list_outliers(detector, None, limit)
    if as_json:
        for o in rows:
            click.echo(json.dumps({"id": o.id, "detector": o.detector, "ts": o.ts.isoformat(), "key": o.key,
                                   "score": o.score, "threshold": o.threshold,
                                   "model_version": o.model_version, "contributions": o.contributions,
                                   "expected": o.expected, "fields": o.fields}))
        return
    cells = []
    for o in rows:
        top = ", ".join(
            f"{c['feature']}={short(c['actual'])} (exp {short(c['expected'])})" for c in o.contributions[:3])
        cells.append([o.id, o.detector, o.ts.strftime("%Y-%m-%d %H:%M:%S"), o.key,
                      f"{o.score / o.threshold:.1f}x" if o.threshold else o.score, f"v{o.model_version}",
                      o.fields.get("incident", "") if "incident" in o.fields else "", top])
    headers = ["id", "detector", "ts", "key", "score/thr", "model", "incident", "top features"]
    if not any(r[6] for r in cells):
        headers.pop(6)
        cells = [r[:6] + r[7:] for r in cells]
    click.echo(table(headers, cells) if cells else "no outliers yet")


@cli.group()
def models() -> None:
    """Model versions."""


@models.command("list")
@config_option
@click.option("--detector", "-d", help="Only this detector.")
def models_list(config_path: Path, detector: str | None) -> None:
    """Model versions with status, threshold, window size and validation loss."""
    from detector.store.db import open_repository

    config = load(config_path)
    rows = open_repository(config.store_url).list_models(detector)
    cells = [[m.detector, f"v{m.version}", m.status, m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
              f"{m.threshold:.4g}", m.n_records, m.meta.get("report", {}).get("val_loss"),
              m.meta.get("report", {}).get("device")] for m in rows]
    click.echo(table(["detector", "version", "status", "trained", "threshold", "records", "val loss",
                       "device"], cells) if cells else "no models yet")


models.add_command(models_show)
models.add_command(models_promote)
models.add_command(models_rollback)
cli.add_command(check_data)
cli.add_command(evaluate)
outliers.add_command(outliers_show)
outliers.add_command(outliers_review)
outliers.add_command(outliers_export)
cli.add_command(maintenance)
cli.add_command(report)
cli.add_command(tune)


@cli.group()
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


@cli.group("config")
def config_group() -> None:
    """Configuration."""


@config_group.command("check")
@config_option
def config_check(config_path: Path) -> None:
    """Validate the configuration file without starting anything."""
    config = load(config_path)
    names = ", ".join(f"{n} ({d.source.type})" for n, d in config.detectors.items()) or "none"
    click.echo(f"{config_path}: ok; detectors: {names}; store: {config.store_url}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: one-line errors with exit status 2 for bad config, 1 for other failures."""
    try:
        cli.main(args=argv, prog_name="vigil", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except ConfigError as exc:
        click.echo(f"vigil: {exc}", err=True)
        sys.exit(2)
    except VigilError as exc:
        click.echo(f"vigil: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
