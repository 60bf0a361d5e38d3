"""The `vigil` command line: the top-level group, its commands and groups, and the entry point."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from detector import __version__
from detector.cli.data import check_data
from detector.cli.maintenance import maintenance
from detector.cli.models import models, train
from detector.cli.offline import evaluate, replay, report, score, tune
from detector.cli.outliers import outliers
from detector.cli.run import config_group, db, run
from detector.cli.status import status
from detector.errors import ConfigError, UnknownDetectorError, VigilError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vigil")
def cli() -> None:
    """Vigil: an anomaly-detection monitoring daemon.

    It learns what normal records look like (an autoencoder and a memory of normal neighbours), scores
    every new record by how unlike them it is (by default the hybrid score: reconstruction error,
    distance and density of its nearest normal records), and stores and explains the outliers.
    """

for command in (run, status, train, score, outliers, models, check_data, evaluate, replay, maintenance, report, tune,
                db, config_group):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: one-line errors with exit status 2 for bad config, usage and unknown detectors, 1 for
    other failures."""
    try:
        cli.main(args=argv, prog_name="vigil", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except (ConfigError, UnknownDetectorError) as exc:
        click.echo(f"vigil: {exc}", err=True)
        sys.exit(2)
    except VigilError as exc:
        click.echo(f"vigil: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
