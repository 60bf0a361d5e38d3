"""`vigil check-data`: a training window's diversity checks, from the store or a file, without training."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import pandas as pd

from detector.cli.common import DetectorCommand, config_option, known_detector, load, short, table
from detector.config import DetectorConfig, ModelConfig
from detector.errors import NoRecordsError

__all__ = ["check_data"]


def _report_for_detector(config_path: Path, detector: str) -> dict[str, Any]:
    from detector.frames import records_frame
    from detector.store.db import open_repository
    from detector.trainer import diversity_report

    config = load(config_path)
    det = known_detector(config.detectors, detector)
    repo = open_repository(config.store_url)
    latest = repo.latest_ts(detector)
    if latest is None:
        raise NoRecordsError(f"detector {detector!r} has no records yet")
    since = latest - pd.Timedelta(seconds=det.training.window).to_pytimedelta()
    records = repo.training_window(detector, since, det.training.max_records, det.review.states_into_training)
    frame = records_frame(records, det.feature_schema)
    return diversity_report(repo, detector, det, records, frame, since).to_dict()


def _report_for_file(path: Path, det: DetectorConfig | None) -> tuple[dict[str, Any], int]:
    from detector.records import RecordValidator
    from detector.sources.files import read_records
    from training.diversity import DiversityLimits, check_window
    from training.model import AutoencoderSpec, count_parameters
    from training.preprocess import Preprocessor
    from training.schema import Schema

    raws = read_records(path)
    if det is not None:
        schema, ts_field, key_field = det.feature_schema, det.ts_field, det.key_field
        batch = RecordValidator(schema, ts_field, key_field).validate_many(raws)
        rows = [{**r.fields, ts_field: r.ts, key_field: r.key} for r in batch.accepted]
        rejected, model, limits = len(batch.rejected), det.model, DiversityLimits(**det.diversity.limits())
        span: float | None = det.training.window
    else:
        ts_field, key_field, rejected, model, limits, span = "ts", "key", 0, ModelConfig(), DiversityLimits(), None
        rows = [r for r in raws if isinstance(r, dict)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise NoRecordsError(f"file {path.name}: no valid records to check")
    if det is None:
        schema = Schema.infer(frame, exclude=[c for c in (ts_field, key_field) if c in frame.columns])
    timestamps = None
    if ts_field in frame.columns:
        timestamps = pd.to_datetime(frame[ts_field], utc=True, errors="coerce").dropna()
        timestamps = timestamps if len(timestamps) == len(frame) else None
    n_columns = Preprocessor.fit(frame, schema).n_columns
    n_parameters = count_parameters(AutoencoderSpec(n_inputs=n_columns, hidden=tuple(model.hidden),
                                                    latent=model.latent))
    report = check_window(frame, schema, limits, n_parameters=n_parameters, timestamps=timestamps,
                          keys=frame[key_field] if key_field in frame.columns else None, expected_span_s=span)
    return report.to_dict(), rejected


def _check_rows(checks: list[dict[str, Any]]) -> list[list[str]]:
    """One table row per check; a check that could not run (no value) shows as skipped, with why."""
    rows = []
    for c in checks:
        skipped = c["value"] is None
        status = "skipped" if skipped else c["status"]
        message = c["message"] if skipped or c["status"] != "ok" else ""
        rows.append([c["check"], status, c["feature"] or "", short(c["value"]), short(c["limit"]), message])
    return rows


@click.command("check-data", cls=DetectorCommand)
@click.argument("detector", required=False)
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Check this CSV, Parquet or NDJSON file as if it were the training window.")
@click.option("--json", "as_json", is_flag=True, help='Print {"checks": [...]} as JSON.')
@config_option
def check_data(detector: str | None, file: Path | None, as_json: bool, config_path: Path) -> None:
    """Check a training window's diversity without training.

    With DETECTOR alone, its current window in the store (against its longer history); with
    --file, that file (the schema is DETECTOR's, or inferred from the file when none is named).
    Exit status 1 when a check fails.
    """
    if file is None and detector is None:
        raise click.UsageError("name a DETECTOR, a --file, or both")
    if file is None:
        report, rejected = _report_for_detector(config_path, detector or ""), 0
    else:
        det = known_detector(load(config_path).detectors, detector) if detector else None
        report, rejected = _report_for_file(file, det)
    if as_json:
        click.echo(json.dumps({"status": report["status"], "checks": report["checks"]}, indent=2))
    else:
        click.echo(table(["check", "status", "feature", "value", "limit", "message"], _check_rows(report["checks"])))
        click.echo(f"\nwindow: {report['status']}" + (f"; {rejected} records rejected by the schema" if rejected
                                                       else ""))
    if report["status"] == "fail":
        sys.exit(1)
