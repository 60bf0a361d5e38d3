"""Scorer: batches of several detectors share a bounded number of scoring slots; flagged rows are explained
in one pass, exactly as the training library explains a row."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from detector.daemon import Runtime
from detector.frames import records_frame, to_json_value
from detector.scoring import ActiveModel, Scorer
from detector.store.types import PendingRecord, ScoredRecord
from detector.trainer import settings_for
from training.fit import fit_model
from training.loop import TrainSettings


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


def test_explanations_are_the_libraries_top_contributions(runtime: Runtime) -> None:
    """The scorer explains all flagged rows at once; each must equal ScoreResult.top_contributions for it."""
    vigil = runtime.vigil
    det = vigil.detector("web")
    rng = np.random.default_rng(0)
    n = 600
    load = rng.uniform(0.2, 1.0, n)
    fields = [{"load": float(load[i]), "cpu": float(10 + 70 * load[i] + rng.normal(0, 2)),
               "latency": float(40 + 120 * load[i] + rng.normal(0, 4)), "region": ["eu", "us", "ap"][i % 3],
               "healthy": [True, False, None][i % 3]} for i in range(n)]
    model_settings, train, threshold = settings_for(det)
    train = TrainSettings(**{**train.to_dict(), "epochs": 3})
    fitted = fit_model(pd.DataFrame(fields), det.feature_schema, model_settings, train, threshold)
    odd = [{**f, "cpu": f["cpu"] * 3, "region": "mars" if i % 4 == 0 else f["region"]}
           for i, f in enumerate(fields[:40])]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    pending = [PendingRecord(i, t0 + timedelta(seconds=i), "h", f) for i, f in enumerate(odd + fields[40:200])]
    scorer = Scorer(vigil, _Cache(fitted))   # type: ignore[arg-type]
    scored = scorer._score_batch("web", ActiveModel(1, 1, fitted), pending)
    result = fitted.score(records_frame(pending, det.feature_schema))
    flagged = [s for s in scored if s.outlier is not None]
    assert len(flagged) == int(result.is_outlier.sum()) >= 20
    for s in scored:
        i = s.id
        assert s.score == float(result.scores[i])
        assert s.ood == result.out_of_distribution(i)
        if s.outlier is None:
            continue
        top_k = det.scoring.top_contributions
        assert s.outlier["contributions"] == result.top_contributions(i, pending[i].fields, top_k)
        expected_row = result.expected.iloc[i]
        assert s.outlier["expected"] == {col: to_json_value(expected_row[col]) for col in result.expected.columns}
