"""`vigil models list/show/promote/rollback` and `vigil train`: model versions of a detector."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from detector.cli.common import (
    DetectorCommand,
    DetectorGroup,
    config_option,
    known_detector,
    load,
    prepare_torch,
    short,
    table,
)
from detector.errors import UnknownModelVersionError

if TYPE_CHECKING:
    from detector.store.repository import Repository
    from training.loop import EpochStats

__all__ = ["models", "train"]


@click.group(cls=DetectorGroup)
def models() -> None:
    """Model versions."""


@models.command("list")
@config_option
@click.option("--detector", "-d", help="Only this detector.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def models_list(config_path: Path, detector: str | None, as_json: bool) -> None:
    """Model versions with status, threshold, window size and validation loss."""
    from detector.store.db import open_repository

    config = load(config_path)
    if detector is not None:
        known_detector(config.detectors, detector)
    rows = open_repository(config.store_url).list_models(detector)
    if as_json:
        for m in rows:
            report = m.meta.get("report", {})
            click.echo(json.dumps({"detector": m.detector, "version": m.version, "status": m.status,
                                   "created_at": _iso(m.created_at), "activated_at": _iso(m.activated_at),
                                   "threshold": m.threshold, "records": m.n_records,
                                   "val_loss": report.get("val_loss"), "device": report.get("device")}))
        return
    cells = [[m.detector, f"v{m.version}", m.status, m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
              short(m.threshold), m.n_records, short(m.meta.get("report", {}).get("val_loss")),
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


class _EpochProgress:
    """The progress bar of `vigil train`: epochs of the network being trained, out of model.epochs.

    A run may train several networks (the first window's screening fit, the calibration folds): each starts
    the bar again. Early stopping ends a network before model.epochs: the bar then ends full at the epochs
    that ran (never past them), and its label says it stopped early."""

    def __init__(self, bar: Any, detector: str, epochs: int) -> None:
        self._bar, self._detector, self._epochs = bar, detector, epochs
        self._network = 0
        self._last_epoch = 0

    def on_epoch(self, stats: EpochStats) -> None:
        if stats.epoch <= self._last_epoch or self._network == 0:
            self._network += 1
            self._bar.pos, self._bar.finished = 0, False
        self._last_epoch = stats.epoch
        network = f", network {self._network}" if self._network > 1 else ""
        self._bar.label = f"training {self._detector}{network} (val loss {stats.val_loss:.4g})"
        self._bar.update(min(stats.epoch, self._epochs) - self._bar.pos)

    def finish(self) -> None:
        if 0 < self._last_epoch < self._epochs:
            self._bar.label = (f"training {self._detector}: stopped early at epoch {self._last_epoch} "
                               f"of at most {self._epochs}")
            self._bar.length = self._bar.pos = self._last_epoch
            self._bar.finished = True
            self._bar.render_progress()


@click.command(cls=DetectorCommand)
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
    det = known_detector(config.detectors, detector)
    setup_logging("warning", "text", sys.stderr)
    prepare_torch(config.daemon)
    vigil = Vigil(config, open_repository(config.store_url), Metrics(CollectorRegistry()))
    with click.progressbar(length=det.model.epochs, label=f"training {detector}",
                           show_pos=True, file=sys.stderr) as bar:
        progress = _EpochProgress(bar, detector, det.model.epochs)
        outcome = Trainer(vigil).train(detector, "manual", on_epoch=progress.on_epoch)
        progress.finish()
    click.echo(f"{outcome.result}: {outcome.message}")
    if outcome.result != "success":
        sys.exit(1)
