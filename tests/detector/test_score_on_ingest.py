"""Scoring on ingest: a batch is scored before it is stored and goes in scored, with its outliers, in one
transaction; it gives what the score job gives; when scoring fails or is off, records wait as pending."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.store.tables import OutlierRow, RecordRow
from detector.store.types import ModelVersion
from tests.support.alerting import LATER, install, normal, slow, spike, trained_model

from .conftest import HTTP_DETECTOR

__all__ = ["trained_model"]      # the shared model fixture


@pytest.fixture
def build(write_config: Callable[..., Path], trained_model: ModelVersion, tmp_path: Path) -> Callable[..., Runtime]:
    """A runtime with the shared model active, in a folder (and store) of its own."""

    def make(on_ingest: bool = True) -> Runtime:
        text = HTTP_DETECTOR.replace("batch_size = 500\n", f"batch_size = 500\non_ingest = {str(on_ingest).lower()}\n")
        folder = "inline" if on_ingest else "later"
        (tmp_path / folder).mkdir(exist_ok=True)
        runtime = build_runtime(load_config(write_config(text, f"{folder}/config.toml")), CollectorRegistry(),
                                with_process_metrics=False)
        return install(runtime, trained_model)

    return make


def _batch() -> list[dict[str, Any]]:
    records = normal(60, 7, LATER)
    for i in (5, 31):
        records[i] = spike(records[i])
    records[44] = slow(records[44])
    records[50] = {**records[50], "region": "mars"}           # an unseen category: an out-of-distribution note
    return records


def _stored(runtime: Runtime) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    sessions = runtime.vigil.repo._sessions
    with sessions() as session:
        records = [(r.ts, r.key, r.fields, r.state, r.score, r.is_outlier, r.ood)
                   for r in session.scalars(select(RecordRow).order_by(RecordRow.ts, RecordRow.id))]
        outliers = [(o.ts, o.key, o.fields, o.score, o.contributions, o.expected, o.ood)
                    for o in session.scalars(select(OutlierRow).order_by(OutlierRow.ts, OutlierRow.id))]
    return records, outliers


def test_scoring_on_ingest_stores_what_the_score_job_stores(build: Callable[..., Runtime]) -> None:
    inline, later = build(), build(on_ingest=False)
    assert inline.vigil.ingest("web", _batch(), "http").accepted == 60
    assert later.vigil.ingest("web", _batch(), "http").accepted == 60
    assert later.vigil.repo.counts()["web"].pending == 60           # on_ingest = false: they wait
    assert inline.vigil.repo.counts()["web"].pending == 0
    assert inline.scorer.score("web") == 0
    assert later.scorer.score("web") == 60
    inline_rows, inline_outliers = _stored(inline)
    later_rows, later_outliers = _stored(later)
    assert inline_rows == later_rows
    assert inline_outliers == later_outliers
    assert len(inline_outliers) >= 2 and all(row[3] == "scored" for row in inline_rows)
    assert any(row[6] is not None for row in inline_rows)          # the unseen region was noted
    for name in ("vigil_records_scored_total", "vigil_outliers_total", "vigil_score_threshold_ratio_count",
                 "vigil_score_threshold_ratio_sum"):
        labels = {"detector": "web"}
        assert inline.registry.get_sample_value(name, labels) == later.registry.get_sample_value(name, labels), name
    assert inline.registry.get_sample_value("vigil_records_out_of_distribution_total",
                                            {"detector": "web", "kind": "unseen_category"}) == 1


def test_a_scoring_failure_leaves_the_batch_pending_for_the_score_job(
        build: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = build()
    model = runtime.scorer._cache.get("web")
    assert model is not None

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the model broke")

    monkeypatch.setattr(model.model, "score", broken)
    assert runtime.vigil.ingest("web", _batch(), "http").accepted == 60       # stored all the same
    assert runtime.vigil.repo.counts()["web"].pending == 60
    assert runtime.registry.get_sample_value("vigil_errors_total", {"component": "scoring"}) == 1
    monkeypatch.undo()
    assert runtime.scorer.score("web") == 60
    counts = runtime.vigil.repo.counts()["web"]
    assert (counts.pending, counts.scored) == (0, 60) and counts.outliers >= 2


def test_without_an_active_model_records_wait_for_the_first_one(write_config: Callable[[str], Path]) -> None:
    runtime = build_runtime(load_config(write_config(HTTP_DETECTOR)), CollectorRegistry(), with_process_metrics=False)
    assert runtime.vigil.ingest("web", normal(30, 1), "http").accepted == 30
    counts = runtime.vigil.repo.counts()["web"]
    assert (counts.pending, counts.scored) == (30, 0)
    assert runtime.registry.get_sample_value("vigil_errors_total", {"component": "scoring"}) == 0


def test_a_model_this_process_promotes_scores_the_next_batch(build: Callable[..., Runtime],
                                                             trained_model: ModelVersion) -> None:
    runtime = build()
    assert runtime.vigil.ingest("web", normal(10, 3, LATER), "http").accepted == 10
    m = trained_model
    assert m.weights is not None
    newer = runtime.vigil.repo.save_model("web", m.weights, m.meta, m.threshold, m.n_records, None, None)
    assert runtime.vigil.ingest("web", normal(10, 4, LATER), "http").accepted == 10     # at once, not 1 s later
    with runtime.vigil.repo._sessions() as session:
        versions = [v for (v,) in session.execute(select(RecordRow.model_version_id).order_by(RecordRow.id))]
    assert versions[10:] == [newer.id] * 10 and newer.id not in versions[:10]


def test_a_maintenance_window_this_process_declares_applies_to_the_next_batch(build: Callable[..., Runtime]) -> None:
    runtime = build()
    first = _batch()
    assert runtime.vigil.ingest("web", first, "http").accepted == 60
    flagged_before = runtime.vigil.repo.counts()["web"].outliers
    assert flagged_before >= 2                    # the windows of the detector were read (none) and kept
    later = [dict(r, ts=(LATER + timedelta(days=1, minutes=i)).isoformat()) for i, r in enumerate(first)]
    runtime.vigil.repo.reviews.add_window("web", LATER + timedelta(days=1), LATER + timedelta(days=2), "upgrade")
    assert runtime.vigil.ingest("web", later, "http").accepted == 60
    counts = runtime.vigil.repo.counts()["web"]
    assert counts.outliers == flagged_before      # nothing of the second batch flagged: it lies in the window
    assert counts.scored == 120
