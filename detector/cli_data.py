"""Commands that look at data and models: `vigil check-data` and `vigil models show`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pandas as pd

from detector.cli_common import config_option, load, short, table
from detector.config import DetectorConfig, ModelConfig
from detector.errors import IngestError, UnknownDetectorError, VigilError

__all__ = ["check_data", "models_promote", "models_rollback", "models_show"]


def _report_for_detector(config_path: Path, detector: str) -> dict[str, Any]:
    from detector.frames import records_frame
    from detector.store.db import open_repository
    from detector.trainer import diversity_report

    config = load(config_path)
    det = _detector(config.detectors, detector)
    repo = open_repository(config.store_url)
    latest = repo.latest_ts(detector)
    if latest is None:
        raise VigilError(f"detector {detector!r} has no records yet")
    since = latest - pd.Timedelta(seconds=det.training.window).to_pytimedelta()
    records = repo.training_window(detector, since, det.training.max_records, det.review.states_into_training)
    frame = records_frame(records, det.feature_schema)
    return diversity_report(repo, detector, det, records, frame, since).to_dict()


def _detector(detectors: dict[str, DetectorConfig], name: str) -> DetectorConfig:
    if name not in detectors:
        raise UnknownDetectorError(name, list(detectors))
    return detectors[name]


def _report_for_file(path: Path, det: DetectorConfig | None) -> tuple[dict[str, Any], int]:
    from detector.records import RecordValidator
    from detector.sources.files import read_records
    from training.diversity import DiversityLimits, check_window
    from training.model import AutoencoderSpec, count_parameters
    from training.preprocess import Preprocessor
    from training.schema import Schema

    try:
        raws = read_records(path)
    except IngestError as exc:
        raise VigilError(exc.message) from exc
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
        raise VigilError(f"file {path.name}: no valid records to check")
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


@click.command("check-data")
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
        det = _detector(load(config_path).detectors, detector) if detector else None
        report, rejected = _report_for_file(file, det)
    if as_json:
        click.echo(json.dumps({"status": report["status"], "checks": report["checks"]}, indent=2))
    else:
        rows = [[c["check"], c["status"], c["feature"] or "", short(c["value"]), short(c["limit"]),
                 c["message"] if c["status"] != "ok" else ""] for c in report["checks"]]
        click.echo(table(["check", "status", "feature", "value", "limit", "message"], rows))
        click.echo(f"\nwindow: {report['status']}" + (f"; {rejected} records rejected by the schema" if rejected
                                                       else ""))
    if report["status"] == "fail":
        sys.exit(1)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _one_detector(config_path: Path, detector: str | None) -> tuple[str, Any]:
    from detector.store.db import open_repository

    config = load(config_path)
    if detector is None:
        if len(config.detectors) != 1:
            raise click.UsageError("several detectors are configured: name one with --detector")
        detector = next(iter(config.detectors))
    _detector(config.detectors, detector)
    return detector, open_repository(config.store_url)


@click.command("promote")
@click.argument("version", type=int)
@click.option("--detector", "-d", help="Detector of the version (needed when several are configured).")
@config_option
def models_promote(version: int, detector: str | None, config_path: Path) -> None:
    """Make VERSION the active model (a running daemon switches at its next scoring run)."""
    name, repo = _one_detector(config_path, detector)
    model = repo.promote(name, version)
    click.echo(f"{name}: v{model.version} is active")


@click.command("rollback")
@click.argument("detector")
@config_option
def models_rollback(detector: str, config_path: Path) -> None:
    """Go back to the version before the active one."""
    name, repo = _one_detector(config_path, detector)
    model = repo.rollback(name)
    click.echo(f"{name}: rolled back to v{model.version}")


@click.command("show")
@click.argument("version", type=int)
@click.option("--detector", "-d", help="Detector of the version (needed when several are configured).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def models_show(version: int, detector: str | None, as_json: bool, config_path: Path) -> None:
    """One model version: training window, report, threshold and diversity warnings."""
    from detector.store.db import open_repository

    config = load(config_path)
    if detector is None:
        if len(config.detectors) != 1:
            raise click.UsageError("several detectors are configured: name one with --detector")
        detector = next(iter(config.detectors))
    _detector(config.detectors, detector)
    model = open_repository(config.store_url).get_model(detector, version)
    if model is None:
        raise VigilError(f"detector {detector!r} has no model version {version}")
    report = {k: v for k, v in model.meta.get("report", {}).items() if k not in ("history", "settings")}
    info = {
        "detector": model.detector, "version": model.version, "status": model.status,
        "created_at": _iso(model.created_at), "activated_at": _iso(model.activated_at),
        "window": {"start": _iso(model.window_start), "end": _iso(model.window_end), "records": model.n_records},
        "threshold": model.meta.get("threshold"), "report": report,
        "settings": model.meta.get("report", {}).get("settings"), "diversity": model.meta.get("diversity"),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    threshold = info["threshold"] or {}
    lines = [
        f"{detector} v{model.version} ({model.status}), trained {info['created_at']}",
        f"window: {info['window']['start']} .. {info['window']['end']}, {model.n_records} records",
        f"threshold: {short(threshold.get('value'))} ({threshold.get('method')}, target FPR "
        f"{threshold.get('target_fpr')}, {threshold.get('n_holdout')} held-out records, expected outlier rate "
        f"{short(threshold.get('expected_outlier_rate'))})",
        "training: " + ", ".join(f"{k}={short(v)}" for k, v in report.items() if not isinstance(v, dict)),
    ]
    diversity = info["diversity"] or {}
    problems = [c for c in diversity.get("checks", []) if c.get("status") != "ok"]
    lines.append(f"diversity: {diversity.get('status', 'not checked')}"
                 + "".join(f"\n  {c['status']}: {c['message']}" for c in problems))
    click.echo("\n".join(lines))
