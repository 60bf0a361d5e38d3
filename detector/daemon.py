"""Assemble the running daemon: store, metrics, sources, scorer, trainer and their scheduled jobs."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from detector.config import Config, DemoSourceConfig, FileSourceConfig, PrometheusSourceConfig, SqlSourceConfig
from detector.errors import SourceError, StorageError
from detector.metrics import Metrics, StoreCollector
from detector.scheduler import JobScheduler, training_trigger
from detector.scoring import ModelCache, Scorer
from detector.service import Vigil
from detector.sources.base import PullSource
from detector.sources.demo import DemoSource
from detector.sources.files import FileSource
from detector.sources.prometheus import PrometheusSource
from detector.sources.sql import SqlSource
from detector.store.db import open_repository
from detector.trainer import Trainer

__all__ = ["Runtime", "build_runtime", "ensure_token"]

logger = logging.getLogger(__name__)

_COMPONENTS = {"score": "scoring", "train": "training", "poll": "source", "retention": "store"}


def ensure_token(path: Path) -> str:
    """The API token from `path`; on first start a random one is written there (mode 0600)."""
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            if path.stat().st_mode & 0o077:
                logger.warning("token file is readable by other users", extra={"path": str(path)})
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    logger.info("API token created", extra={"path": str(path)})
    return token


def build_sources(vigil: Vigil) -> list[PullSource]:
    sources: list[PullSource] = []
    for name, det in vigil.config.detectors.items():
        if isinstance(det.source, DemoSourceConfig):
            sources.append(DemoSource(name, det.source, vigil))
        elif isinstance(det.source, FileSourceConfig):
            sources.append(FileSource(name, det.source, vigil))
        elif isinstance(det.source, PrometheusSourceConfig):
            sources.append(PrometheusSource(name, det.source, vigil))
        elif isinstance(det.source, SqlSourceConfig):
            sources.append(SqlSource(name, det.source, vigil))
    return sources


@dataclass
class Runtime:
    """Everything the running daemon holds; `start` schedules the jobs, `stop` ends them."""

    config: Config
    vigil: Vigil
    scorer: Scorer
    trainer: Trainer
    registry: CollectorRegistry
    token: str
    sources: list[PullSource] = field(default_factory=list)
    scheduler: JobScheduler | None = None

    def _on_job_error(self, job_id: str, exc: BaseException) -> None:
        component = _COMPONENTS.get(job_id.split(":", 1)[0], "daemon")
        self.vigil.metrics.errors.labels(component).inc()
        if isinstance(exc, StorageError):
            logger.warning("job failed: store unavailable", extra={"job": job_id, "error": str(exc)})
        elif isinstance(exc, SourceError):
            logger.warning("job failed: source unavailable", extra={"job": job_id, "error": str(exc)})
        else:
            logger.error("job failed", extra={"job": job_id, "error": str(exc)}, exc_info=exc)

    def score_job(self, name: str) -> None:
        if self.trainer.ready_for_first_model(name) and self.scheduler is not None:
            self.scheduler.run_soon(f"train:{name}")
        self.scorer.score(name)

    def train_job(self, name: str) -> None:
        first = self.vigil.repo.active_model_id(name) is None
        self.trainer.train(name, "first" if first else "schedule")

    def retention_job(self) -> None:
        now = datetime.now(UTC)
        store = self.config.store
        records, rejects = self.vigil.repo.purge(now - timedelta(seconds=store.retention),
                                                 now - timedelta(seconds=store.reject_retention))
        if records or rejects:
            logger.info("retention", extra={"records_deleted": records, "rejects_deleted": rejects})

    def start(self) -> None:
        abandoned = self.vigil.repo.abandon_running_runs()
        if abandoned:
            logger.warning("training runs interrupted by the last stop", extra={"runs": abandoned})
        scheduler = JobScheduler(self._on_job_error)
        for source in self.sources:
            scheduler.every(f"poll:{source.detector}", source.poll_interval_s, source.poll)
        for name, det in self.config.detectors.items():
            scheduler.every(f"score:{name}", det.scoring.interval, partial(self.score_job, name))
            scheduler.on_trigger(f"train:{name}", training_trigger(det.training),
                                 partial(self.train_job, name))
        scheduler.every("retention", self.config.store.retention_interval, self.retention_job)
        self.scheduler = scheduler
        scheduler.start()
        logger.info("daemon started", extra={"detectors": sorted(self.config.detectors)})

    def stop(self) -> None:
        self.vigil.stopping.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        logger.info("daemon stopped")


def build_runtime(config: Config, registry: CollectorRegistry | None = None,
                  with_process_metrics: bool = True) -> Runtime:
    """Open and migrate the store, wire metrics, sources, scorer and trainer (jobs not started)."""
    registry = registry or CollectorRegistry()
    if with_process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    repo = open_repository(config.store_url)
    metrics = Metrics(registry)
    metrics.initialise({name: det.source.type for name, det in config.detectors.items()})
    vigil = Vigil(config, repo, metrics)
    registry.register(StoreCollector(repo.metrics_snapshot, lambda: list(config.detectors)))
    cache = ModelCache(vigil)
    for name in config.detectors:
        cache.get(name)             # publishes the active model's metrics at start
    token = ensure_token(config.http.token_file)
    return Runtime(config=config, vigil=vigil, scorer=Scorer(vigil, cache), trainer=Trainer(vigil),
                   registry=registry, token=token, sources=build_sources(vigil))
