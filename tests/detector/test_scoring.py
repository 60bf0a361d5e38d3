"""Scorer: batches of several detectors share a bounded number of scoring slots."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from detector.daemon import Runtime
from detector.scoring import ActiveModel, Scorer
from detector.store.repository import ScoredRecord


class _Cache:
    def __init__(self, model: Any) -> None:
        self.model = model

    def get(self, name: str) -> ActiveModel:
        return ActiveModel(1, 1, self.model)


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_batches_never_exceed_the_slots(runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
                                                   slots: int) -> None:
    vigil = runtime.vigil
    model = SimpleNamespace(schema=vigil.detector("web").feature_schema, threshold=SimpleNamespace(value=1.0))
    scorer = Scorer(vigil, _Cache(model), concurrency=slots)   # type: ignore[arg-type]
    lock = threading.Lock()
    active, most = 0, 0

    def score_pending(detector: str, limit: int, version: int, threshold: float,
                      scorer_fn: Any) -> list[ScoredRecord]:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return [ScoredRecord(1, 0.5)]                 # fewer than a batch: score() stops after one

    monkeypatch.setattr(vigil.repo, "score_pending", score_pending)
    threads = [threading.Thread(target=scorer.score, args=("web",)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == slots
    assert vigil.metrics.records_scored.labels("web")._value.get() == 6


def test_default_slots_follow_the_cpus(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    scorer = Scorer(runtime.vigil, _Cache(None))   # type: ignore[arg-type]
    assert all(scorer._slots.acquire(blocking=False) for _ in range(3))
    assert not scorer._slots.acquire(blocking=False)
