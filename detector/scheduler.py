"""Job scheduling: the only module that imports APScheduler (3.x)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from detector.config import Config, TrainingConfig
from detector.errors import ConfigError

__all__ = ["JobScheduler", "check_schedules", "slot_served", "training_trigger"]

logger = logging.getLogger(__name__)


def training_trigger(cfg: TrainingConfig) -> CronTrigger | IntervalTrigger:
    """The trigger of a detector's train job: its cron expression (UTC) or its interval."""
    if cfg.cron is not None:
        return CronTrigger.from_crontab(cfg.cron, timezone=UTC)
    return IntervalTrigger(seconds=cfg.interval or 3600.0, start_date=_ANCHOR, timezone=UTC)


_ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)   # interval slots are aligned to this, the same in every instance


def slot_served(cfg: TrainingConfig, last_start: datetime, now: datetime) -> bool:
    """True when a run that started at `last_start` already served the schedule slot `now` falls in."""
    following = training_trigger(cfg).get_next_fire_time(None, last_start + timedelta(milliseconds=1))
    return following is not None and following > now


def check_schedules(config: Config, path: str) -> None:
    """Raise ConfigError for a cron expression APScheduler cannot parse."""
    for name, det in config.detectors.items():
        try:
            training_trigger(det.training)
        except ValueError as exc:
            raise ConfigError(path, f"detectors.{name}.training.cron: {exc}") from None


class JobScheduler:
    """Wraps a BackgroundScheduler: each job runs alone (max_instances=1), missed runs coalesce."""

    def __init__(self, on_error: Callable[[str, BaseException], None], threads: int = 8) -> None:
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=threads)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )
        self._on_error = on_error

        def listener(event: JobExecutionEvent) -> None:
            if event.exception is not None:
                self._on_error(event.job_id, event.exception)

        self._scheduler.add_listener(listener, EVENT_JOB_ERROR)

    def every(self, job_id: str, seconds: float, func: Callable[[], Any], start_now: bool = True) -> None:
        self._scheduler.add_job(func, IntervalTrigger(seconds=seconds, timezone=UTC), id=job_id,
                                next_run_time=datetime.now(UTC) if start_now else None,
                                replace_existing=True)

    def on_trigger(self, job_id: str, trigger: CronTrigger | IntervalTrigger, func: Callable[[], Any]) -> None:
        self._scheduler.add_job(func, trigger, id=job_id, replace_existing=True)

    def remove(self, job_id: str) -> None:
        """Remove a job if it exists (a run in flight finishes)."""
        if self._scheduler.get_job(job_id) is not None:
            self._scheduler.remove_job(job_id)

    def run_once(self, job_id: str, func: Callable[[], Any]) -> None:
        """Run `func` once, now, as job `job_id` (not twice at once); periodic schedules keep their slots."""
        if self._scheduler.get_job(job_id) is None:
            self._scheduler.add_job(func, "date", run_date=datetime.now(UTC), id=job_id, replace_existing=True)

    def next_run(self, job_id: str) -> datetime | None:
        job = self._scheduler.get_job(job_id)
        return None if job is None else job.next_run_time

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
