"""`vigil models list/show/promote/rollback` and `vigil train`: model versions of a detector."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from detector.cli.common import config_option, known_detector, load, prepare_torch, short, table
from detector.errors import UnknownModelVersionError

if TYPE_CHECKING:
    from detector.store.repository import Repository

__all__ = ["models", "train"]


@click.group()
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


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _one_detector(config_path: Path, detector: str | None) -> tuple[str, Repository]:
    """The detector named, or the only one configured, and the store's repository."""
    from detector.store.db import open_repository

    config = load(config_path)
    if detector is None:
        if len(config.detectors) != 1:
            raise click.UsageError("several detectors are configured: name one with --detector")
        detector = next(iter(config.detectors))
    known_detector(config.detectors, detector)
    return detector, open_repository(config.store_url)


@models.command("promote")
@click.argument("version", type=int)
@click.option("--detector", "-d", help="Detector of the version (needed when several are configured).")
@config_option
def models_promote(version: int, detector: str | None, config_path: Path) -> None:
    """Make VERSION the active model (a running daemon switches at its next scoring run)."""
    name, repo = _one_detector(config_path, detector)
    model = repo.promote(name, version)
    click.echo(f"{name}: v{model.version} is active")


@models.command("rollback")
@click.argument("detector")
@config_option
def models_rollback(detector: str, config_path: Path) -> None:
    """Go back to the version before the active one."""
    name, repo = _one_detector(config_path, detector)
    model = repo.rollback(name)
    click.echo(f"{name}: rolled back to v{model.version}")


@models.command("show")
@click.argument("version", type=int)
@click.option("--detector", "-d", help="Detector of the version (needed when several are configured).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def models_show(version: int, detector: str | None, as_json: bool, config_path: Path) -> None:
    """One model version: training window, report, threshold and diversity warnings."""
    detector, repo = _one_detector(config_path, detector)
    model = repo.get_model(detector, version)
    if model is None:
        raise UnknownModelVersionError(detector, version)
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


@click.command()
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
