"""Assemble the running daemon: store, metrics, sources, scorer, trainer and their scheduled jobs."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from detector.config import Config, load_config, require_detectors
from detector.errors import ConfigError, SourceError, StorageError
from detector.metrics import Metrics, StoreCollector
from detector.notify import Heartbeats, Notifier, Watchdog
from detector.scheduler import JobScheduler, check_schedules, training_trigger
from detector.scoring import ModelCache, Scorer
from detector.service import Vigil
from detector.sources.base import PullSource
from detector.sources.registry import pull_sources
from detector.store.db import open_repository
from detector.trainer import Trainer

__all__ = ["Runtime", "build_runtime", "ensure_token"]

logger = logging.getLogger(__name__)

SCORE_STALL_S = 120.0   # a score job silent (or running) this long stops the watchdog pings
POLL_STALL_S = 300.0
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
    """A poller for every configured detector whose source pulls, each with its own sink."""
    return pull_sources(vigil.config, vigil.sink)


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
    heartbeats: Heartbeats = field(default_factory=Heartbeats)
    notifier: Notifier = field(default_factory=Notifier)
    watchdog: Watchdog | None = None
    _reload_lock: threading.Lock = field(default_factory=threading.Lock)

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
        due = self.trainer.ready_for_first_model(name) or (
            name in self.scorer.incompatible and not self.trainer.is_running(name))
        if due and self.scheduler is not None:
            self.scheduler.run_once(f"train-now:{name}", partial(self.train_job, name))
        self.scorer.score(name)

    def train_job(self, name: str) -> None:
        if self.vigil.repo.active_model_id(name) is None:
            trigger = "first"
        elif name in self.scorer.incompatible:
            trigger = "features"      # the features changed in a reload: the active model no longer fits
        else:
            trigger = "schedule"
        self.trainer.train(name, trigger)

    def reload(self, path: Path) -> bool:
        """Apply a changed config file (SIGHUP): detectors added, removed or changed, without a restart.

        An invalid file (unreadable, not UTF-8, not valid, or without any detector: that would remove every
        running one) keeps the running config, and so does a failure while applying it; [daemon], [store] and
        [http] need a restart. Nothing raises: this runs in a thread of its own.
        """
        try:
            new = load_config(path)
            check_schedules(new, str(path))
            require_detectors(new, path)
        except ConfigError as exc:
            logger.error("config reload refused: the running config stays", extra={"error": str(exc)})
            return False
        except Exception as exc:
            logger.error("config reload failed: the running config stays", extra={"error": str(exc)}, exc_info=exc)
            return False
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            with self._reload_lock:
                self._apply(new)
        except Exception as exc:
            logger.error("config reload failed while applying it", extra={"error": str(exc)}, exc_info=exc)
            return False
        finally:
            self.notifier.send("READY=1", f"STATUS={self.status_line()}")
        return True

    def _apply(self, new: Config) -> None:
        """Switch the running daemon to `new` (validated); called under the reload lock."""
        old = self.config
        fixed = [s for s in ("daemon", "store", "http") if getattr(old, s) != getattr(new, s)]
        if fixed:
            logger.warning("config sections changed that need a restart; they keep their running values",
                           extra={"sections": fixed})
        new = new.model_copy(update={"daemon": old.daemon, "store": old.store, "http": old.http})
        added = sorted(new.detectors.keys() - old.detectors.keys())
        removed = sorted(old.detectors.keys() - new.detectors.keys())
        changed = sorted(n for n in new.detectors.keys() & old.detectors.keys()
                         if new.detectors[n] != old.detectors[n])
        self.config = new
        self.vigil.use_config(new)
        self.vigil.metrics.initialise({n: new.detectors[n].source.type for n in added + changed})
        fresh = {s.detector: s for s in build_sources(self.vigil) if s.detector in added + changed}
        self.sources = [s for s in self.sources if s.detector not in removed + changed] + list(fresh.values())
        if self.scheduler is not None:
            for name in removed + changed:
                self._unschedule_detector(self.scheduler, name)
            for name in added + changed:
                self._schedule_detector(self.scheduler, name)
        logger.info("config reloaded", extra={"added": added, "removed": removed, "changed": changed})

    def retention_job(self) -> None:
        now = datetime.now(UTC)
        store = self.config.store
        records, rejects = self.vigil.repo.purge(now - timedelta(seconds=store.retention),
                                                 now - timedelta(seconds=store.reject_retention),
                                                 now - timedelta(seconds=self.config.http.idempotency_key_ttl))
        pruned = sum(self.vigil.repo.prune_models(name, store.keep_model_versions) for name in self.config.detectors)
        if records or rejects or pruned:
            logger.info("retention", extra={"records_deleted": records, "rejects_deleted": rejects,
                                            "model_versions_pruned": pruned})

    def _schedule_detector(self, scheduler: JobScheduler, name: str) -> None:
        det = self.config.detectors[name]
        for source in self.sources:
            if source.detector == name:
                job = f"poll:{name}"
                scheduler.every(job, source.poll_interval_s, self.heartbeats.wrap(job, source.poll))
                self.heartbeats.watch(job, max(10 * source.poll_interval_s, POLL_STALL_S))
        job = f"score:{name}"
        scheduler.every(job, det.scoring.interval, self.heartbeats.wrap(job, partial(self.score_job, name)))
        self.heartbeats.watch(job, max(10 * det.scoring.interval, SCORE_STALL_S))
        scheduler.on_trigger(f"train:{name}", training_trigger(det.training), partial(self.train_job, name))

    def _unschedule_detector(self, scheduler: JobScheduler, name: str) -> None:
        for job in (f"poll:{name}", f"score:{name}", f"train:{name}"):
            scheduler.remove(job)
            self.heartbeats.forget(job)

    def start(self) -> None:
        abandoned = 0
        for name in self.config.detectors:
            with self.vigil.repo.trainer_lock(name) as mine:   # another live instance may be training it
                if mine:
                    abandoned += self.vigil.repo.abandon_running_runs(name)
        if abandoned:
            logger.warning("training runs interrupted by the last stop", extra={"runs": abandoned})
        scheduler = JobScheduler(self._on_job_error)
        for name in self.config.detectors:
            self._schedule_detector(scheduler, name)
        scheduler.every("retention", self.config.store.retention_interval, self.retention_job)
        self.scheduler = scheduler
        scheduler.start()
        logger.info("daemon started", extra={"detectors": sorted(self.config.detectors)})

    def status_line(self) -> str:
        """One line for systemd's STATUS=: detectors, active model versions, last training."""
        parts, last = [], None
        for name in self.config.detectors:
            model = self.vigil.repo.active_model(name, with_weights=False)
            parts.append(f"{name} v{model.version}" if model else f"{name} no model")
            run = self.vigil.repo.last_counted_run(name)
            if run is not None and (last is None or run.started_at > last[1].started_at):
                last = (name, run)
        text = f"{len(parts)} detector{'s' if len(parts) != 1 else ''}: " + ", ".join(parts)
        if last is not None:
            text += f"; last training {last[0]} {last[1].result} {last[1].started_at:%Y-%m-%d %H:%M}Z"
        return text

    def ready(self) -> None:
        """Tell systemd the daemon is up (migrations ran, jobs are scheduled, HTTP listens)."""
        self.notifier.send("READY=1", f"STATUS={self.status_line()}")
        self.watchdog = Watchdog(self.notifier, self.heartbeats, self.status_line)
        self.watchdog.start()
        logger.info("ready", extra={"watchdog_interval_s": self.watchdog.interval_s})

    def stop(self) -> None:
        self.notifier.send("STOPPING=1")
        self.vigil.stopping.set()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        self.vigil.repo.dispose()
        logger.info("daemon stopped")


def build_runtime(config: Config, registry: CollectorRegistry | None = None,
                  with_process_metrics: bool = True) -> Runtime:
    """Open and migrate the store, wire metrics, sources, scorer and trainer (jobs not started)."""
    registry = registry or CollectorRegistry()
    if with_process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    repo = open_repository(config.store_url, write_timeout=config.store.write_timeout,
                           synchronous=config.store.sqlite_synchronous)
    metrics = Metrics(registry)
    metrics.initialise({name: det.source.type for name, det in config.detectors.items()})
    vigil = Vigil(config, repo, metrics)
    # the detectors of the running config, which a reload changes (not those of `config`)
    registry.register(StoreCollector(repo.metrics_snapshot, lambda: list(vigil.config.detectors)))
    cache = ModelCache(vigil)
    for name in config.detectors:
        cache.get(name)             # publishes the active model's metrics at start
    token = ensure_token(config.http.token_file)
    scorer = Scorer(vigil, cache)
    vigil.scorer = scorer          # records are scored as they arrive (scoring.on_ingest)
    return Runtime(config=config, vigil=vigil, scorer=scorer, trainer=Trainer(vigil),
                   registry=registry, token=token, sources=build_sources(vigil))
