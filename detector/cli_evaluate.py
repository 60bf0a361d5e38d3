"""The `vigil evaluate` command: try a detector's settings on labelled history before enabling it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from detector.cli_common import config_option, load, prepare_torch
from detector.config import DaemonConfig, DetectorConfig
from detector.errors import UnknownDetectorError

__all__ = ["evaluate"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.argument("train_file", metavar="TRAIN", type=_FILE)
@click.argument("test_file", metavar="TEST", type=_FILE)
@click.option("--detector", "-d", help="Train with this detector's model, threshold and training settings "
                                       "(and its features, when TRAIN has them); defaults when not given.")
@config_option
@click.option("--label-column", help="Column holding 1 for an anomaly and 0 for a normal record: required in "
                                     "TEST for the metrics; TRAIN rows labelled 1 are left out of training.")
@click.option("--target-fpr", type=click.FloatRange(0.0, 0.5, min_open=True, max_open=True),
              help="Target false-positive rate of the threshold, instead of the detector's.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write TEST's rows with score and is_outlier here (Parquet if it ends in .parquet, else CSV).")
def evaluate(train_file: Path, test_file: Path, detector: str | None, config_path: Path,
             label_column: str | None, target_fpr: float | None, output: Path | None) -> None:
    """Train on TRAIN (CSV or Parquet, taken as normal), score TEST, and measure the result.

    With --label-column, prints ROC-AUC, average precision, and precision, recall and false-positive
    rate at the fitted threshold.
    """
    from detector.evaluate import EvaluationInputError, evaluate_files, write_scores
    from detector.logs import setup_logging

    setup_logging("warning", "text", sys.stderr)
    det: DetectorConfig | None = None
    daemon = DaemonConfig()
    if detector is not None:
        config = load(config_path)
        if detector not in config.detectors:
            raise UnknownDetectorError(detector, list(config.detectors))
        det, daemon = config.detectors[detector], config.daemon
    prepare_torch(daemon)
    try:
        result = evaluate_files(train_file, test_file, det, detector, label_column, target_fpr)
    except EvaluationInputError as exc:
        click.echo(f"vigil: {exc}", err=True)
        sys.exit(2)
    if output is not None:
        write_scores(result.scores, output)
    click.echo(result.summary())
