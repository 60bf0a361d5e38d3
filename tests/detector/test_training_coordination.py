"""One trainer per detector across instances: schedule slots and the PostgreSQL advisory lock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from detector.config import TrainingConfig
from detector.scheduler import slot_served
from detector.store.db import open_repository

T = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


def test_interval_slots_are_shared_by_every_instance() -> None:
    cfg = TrainingConfig(interval=1800)
    assert slot_served(cfg, T + timedelta(milliseconds=3), T + timedelta(seconds=40))      # same slot
    assert not slot_served(cfg, T - timedelta(minutes=1), T + timedelta(seconds=1))        # previous slot
    assert not slot_served(cfg, T, T + timedelta(minutes=31))                              # next slot due


def test_cron_slots() -> None:
    cfg = TrainingConfig(cron="0 * * * *")
    assert slot_served(cfg, T, T + timedelta(minutes=20))
    assert not slot_served(cfg, T, T + timedelta(minutes=31))


def test_trainer_lock_admits_one_instance_at_a_time(store_url: str) -> None:
    first, second = open_repository(store_url), open_repository(store_url, migrate=False)
    with first.trainer_lock("web") as mine:
        assert mine
        with second.trainer_lock("web") as theirs:
            # PostgreSQL: another connection (another daemon) is refused; SQLite has one process
            assert theirs is (store_url.startswith("sqlite"))
        with second.trainer_lock("other") as other_detector:
            assert other_detector
    with second.trainer_lock("web") as after_release:
        assert after_release
    first.dispose()
    second.dispose()
