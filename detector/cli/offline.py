"""Offline commands: `vigil score` (a file with the active model), `vigil evaluate` (labelled history),
`vigil report` (an HTML page on a detector's model) and `vigil tune` (compare model shapes)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from detector.cli.common import (
    DetectorCommand,
    config_option,
    known_detector,
    load,
    parse_time,
    prepare_torch,
    short,
    table,
)
from detector.config import Config, DaemonConfig, DetectorConfig

if TYPE_CHECKING:
    import pandas as pd

    from detector.offline.tune import TuningResult

__all__ = ["evaluate", "ranked_table", "replay", "report", "score", "tune"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def scores_table(frame: pd.DataFrame) -> str:
    """`vigil score`'s rows as a text table: numbers to 4 significant digits, the flag as yes/no."""
    rows = [[("yes" if v else "no") if col == "is_outlier" else short(v) for col, v in zip(frame.columns, values,
                                                                                          strict=True)]
            for values in frame.itertuples(index=False, name=None)]
    return table([str(c) for c in frame.columns], rows)


def scores_csv(frame: pd.DataFrame) -> str:
    """`vigil score`'s rows as CSV, text cells made spreadsheet-safe as in the outliers export."""
    from detector.review import spreadsheet_safe

    safe = frame.copy()
    for column in safe.select_dtypes(include="object").columns:
        safe[column] = safe[column].map(spreadsheet_safe)
    text: str = safe.to_csv(index=False)
    return text


@click.command(cls=DetectorCommand)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--detector", "-d", required=True, help="Detector whose active model scores the file.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
@click.option("--outliers-only", is_flag=True, help="Only the records above the threshold.")
@config_option
def score(file: Path, detector: str, fmt: str, output: Path | None, outliers_only: bool,
          config_path: Path) -> None:
    """Score FILE (CSV, Parquet or NDJSON) offline with the active model of a detector.

    Exit status 1 when no record of FILE could be scored (every one rejected, or none there).
    """
    from detector.offline.score import score_file

    config = load(config_path)
    known_detector(config.detectors, detector)
    prepare_torch(config.daemon)
    frame, summary = score_file(config, detector, file)
    if outliers_only:
        frame = frame[frame["is_outlier"]]
    text = scores_csv(frame) if fmt == "csv" else scores_table(frame) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)
    click.echo(summary, err=True)


@click.command(cls=DetectorCommand)
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
    from detector.logs import setup_logging
    from detector.offline.evaluate import EvaluationInputError, evaluate_files, write_scores

    setup_logging("warning", "text", sys.stderr)
    det: DetectorConfig | None = None
    daemon = DaemonConfig()
    if detector is not None:
        config = load(config_path)
        det, daemon = known_detector(config.detectors, detector), config.daemon
    prepare_torch(daemon)
    try:
        result = evaluate_files(train_file, test_file, det, detector, label_column, target_fpr)
    except EvaluationInputError as exc:
        click.echo(f"vigil: {exc}", err=True)
        sys.exit(2)
    if output is not None:
        write_scores(result.scores, output)
    click.echo(result.summary())


@click.command(cls=DetectorCommand)
@click.argument("history", type=_FILE)
@click.option("--detector", "-d", required=True, help="Replay through this detector's features, model, threshold, "
                                                     "training schedule and alert hygiene.")
@config_option
@click.option("--label-column", help="Column holding 1 for an anomaly and 0 for a normal record: kept out of the "
                                     "records, it measures the flags (ROC-AUC, average precision, precision, "
                                     "recall, false-positive rate).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every record with score, threshold, is_outlier and model_version here (Parquet if it "
                   "ends in .parquet, else CSV).")
@click.option("--maintenance", "windows", multiple=True, metavar="START/END",
              help="A maintenance window for the replay (ISO 8601 times, a time without zone is UTC): its records "
                   "are scored but never flagged nor trained on. Repeat for several.")
@click.option("--store-maintenance", is_flag=True,
              help="Also apply the maintenance windows declared for DETECTOR in the daemon's store (read only).")
def replay(history: Path, detector: str, config_path: Path, label_column: str | None, output: Path | None,
           windows: tuple[str, ...], store_maintenance: bool) -> None:
    """Run the records of HISTORY (CSV, Parquet or NDJSON; one or many keys) through DETECTOR as the daemon
    would have, in the records' own time, into a scratch store: each record scored by the model active when it
    arrived, models trained on the training schedule's slots over the rolling window (flagged records left out,
    the first window screened), maintenance windows honoured. The running daemon's store is not touched."""
    from detector.logs import setup_logging
    from detector.offline.evaluate import EvaluationInputError, write_scores
    from detector.offline.replay import replay_file

    setup_logging("warning", "text", sys.stderr)
    config = load(config_path)
    known_detector(config.detectors, detector)
    maintenance = [_maintenance_window(text) for text in windows]
    if store_maintenance:
        maintenance += _store_windows(config, detector)
    prepare_torch(config.daemon)
    try:
        result = replay_file(config, detector, history, label_column, maintenance=maintenance)
    except EvaluationInputError as exc:
        click.echo(f"vigil: {exc}", err=True)
        sys.exit(2)
    if output is not None:
        write_scores(result.records, output)
    click.echo(result.summary())


def _maintenance_window(text: str) -> tuple[datetime, datetime, str | None]:
    """START/END of --maintenance as two times with a zone, the end after the start."""
    start, sep, end = text.partition("/")
    if not sep:
        raise click.BadParameter(f"{text!r} is not START/END (two ISO 8601 times joined by /)",
                                 param_hint="--maintenance")
    first, last = parse_time(start.strip(), "--maintenance"), parse_time(end.strip(), "--maintenance")
    if last <= first:
        raise click.BadParameter(f"{text!r}: the end must come after the start", param_hint="--maintenance")
    return first, last, "replay (--maintenance)"


def _store_windows(config: Config, detector: str) -> list[tuple[datetime, datetime, str | None]]:
    """The maintenance windows declared for `detector` in the daemon's store, read without changing it."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from detector.errors import VigilError
    from detector.store.db import open_repository

    url = make_url(config.store_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        click.echo(f"vigil: --store-maintenance: there is no store at {shown} (has the daemon run?)", err=True)
        sys.exit(2)
    try:
        repo = open_repository(config.store_url, migrate=False)
        try:
            return [(w.start, w.end, w.reason) for w in repo.reviews.windows(detector)]
        finally:
            repo.dispose()
    except (VigilError, SQLAlchemyError) as exc:
        click.echo(f"vigil: --store-maintenance: the store at {shown} cannot be read: {exc}", err=True)
        sys.exit(2)


@click.command("report", cls=DetectorCommand)
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
    from detector.offline.report import write_report

    config = load(config_path)
    known_detector(config.detectors, detector)
    prepare_torch(config.daemon)
    path = output or Path(f"vigil-report-{detector}.html")
    data = write_report(config, detector, path, records, top)
    flagged = sum(1 for _, _, f in data.recent if f)
    click.echo(f"{path}: {detector} model v{data.model.version}, {len(data.recent)} recent scores "
               f"({flagged} outliers), {len(data.top)} top outliers")


def ranked_table(result: TuningResult) -> str:
    """The candidates, best first, as a text table with a line saying what ranked them."""
    rows = []
    for rank, r in enumerate(result.ranked, 1):
        row: list[Any] = [f"{rank}*" if r.candidate == result.current else rank, "-".join(map(str, r.candidate.hidden)),
                          r.candidate.latent]
        row += [r.candidate.variant] if any(x.candidate.variant for x in result.ranked) else []
        row += [f"{r.holdout_error:.5g}", f"{r.val_loss:.5g}", r.epochs_run, r.n_parameters, f"{r.seconds:.1f}"]
        if result.ranked_by == "reviews":
            row += [f"{r.average_precision:.3f}" if r.average_precision is not None else "",
                    f"{r.roc_auc:.3f}" if r.roc_auc is not None else ""]
        rows.append([*row, r.error or ""])
    headers = ["rank", "hidden", "latent"] + (["variant"] if any(r.candidate.variant for r in result.ranked) else [])
    headers += ["holdout error", "val loss", "epochs", "params", "seconds"]
    headers += ["AP", "ROC AUC"] if result.ranked_by == "reviews" else []
    headers.append("error")
    if not any(r.error for r in result.ranked):
        headers.pop()
        rows = [r[:-1] for r in rows]
    how = (f"average precision of {result.n_confirmed} confirmed outliers against {result.n_dismissed} dismissed "
           f"and {result.n_holdout} held-out records" if result.ranked_by == "reviews"
           else f"mean reconstruction error of {result.n_holdout} held-out records")
    note = ("" if result.ranked_by == "reviews" else
            "\n\nA lower reconstruction error is not always a better detector: a code nearly as wide as the input\n"
            "reconstructs anomalies too. Review outliers (vigil outliers review) to rank by detection instead.")
    return (f"{result.detector}: {len(result.ranked)} candidates fitted on {result.n_fit} records, ranked by {how} "
            "(* the configured shape)\n\n" + table(headers, rows) + note)


@click.command("tune", cls=DetectorCommand)
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
    from detector.offline.tune import CandidateResult, Grid, model_snippet, run_tuning

    config = load(config_path)
    known_detector(config.detectors, detector)
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
