"""A detector's first window, which no model screened: trimmed and judged at the wide scale as well
(training.first_window_trim, training.first_window_wide_share); later windows, screened, by neither."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from tests.detector.conftest import HTTP_DETECTOR
from tests.support.config import heading, write_config_file

T0 = datetime(2026, 11, 2, tzinfo=UTC)
INCIDENT = range(300, 330)          # 30 of the first window's 600 records: cpu and latency far from what load says


def _records(n: int, start: datetime, seed: int, incident: range = range(0)) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        load = float(rng.uniform(10, 100))
        odd = i in incident
        cpu = 0.8 * load + float(rng.normal(0, 2)) + (60.0 if odd else 0.0)
        out.append({"ts": (start + timedelta(minutes=i)).isoformat(), "host": f"h{i % 3}", "load": load,
                    "cpu": cpu, "latency": 20 + 0.05 * load + float(rng.normal(0, 3)) + (30.0 if odd else 0.0),
                    "region": "eu" if i % 2 else "us", "healthy": bool(i % 5)})
    return out


def _runtime(folder: Path, wide_share: float | None = None) -> Runtime:
    """A runtime with its own SQLite store in `folder`."""
    body = HTTP_DETECTOR
    if wide_share is not None:
        body = body.replace("min_records = 200", f"min_records = 200\nfirst_window_wide_share = {wide_share}")
    folder.mkdir()
    config = write_config_file(folder / "config.toml", heading(), body)
    return build_runtime(load_config(config), CollectorRegistry(), with_process_metrics=False)


def _incident_flagged(runtime: Runtime) -> int:
    """How many of the incident's records the first model, trained on them, flags."""
    runtime.vigil.ingest("web", _records(600, T0, seed=1, incident=INCIDENT), "http")
    outcome = runtime.trainer.train("web")
    assert outcome.result == "success", outcome.message
    runtime.scorer.score("web")
    incident_ts = {T0 + timedelta(minutes=i) for i in INCIDENT}
    flagged = runtime.vigil.repo.list_outliers("web", limit=1000)
    return sum(o.ts in incident_ts for o in flagged)


def test_the_first_window_is_judged_at_the_wide_scale_and_a_screened_one_is_not(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path / "default")
    flagged = _incident_flagged(runtime)
    repo = runtime.vigil.repo
    first = repo.active_model("web", with_weights=False)
    assert first is not None
    wide = first.meta["report"]["wide_scale"]
    assert wide["used"] and wide["k"] == round(0.2 * wide["rows"])     # first_window_wide_share's default
    # at the scale of 5 neighbours the incident's 30 records vouch for each other; at the wide scale they do not
    narrow = _runtime(tmp_path / "narrow", wide_share=0.0)
    flagged_narrow = _incident_flagged(narrow)
    narrow_model = narrow.vigil.repo.active_model("web", with_weights=False)
    assert narrow_model is not None and not narrow_model.meta["report"]["wide_scale"]["used"]
    assert flagged >= 18 and flagged >= 2 * flagged_narrow, (flagged, flagged_narrow)   # 22 and 9 when written

    # the next window leaves out what the first model flagged: screened, it is judged by its neighbours alone
    runtime.vigil.ingest("web", _records(600, T0 + timedelta(days=1), seed=2), "http")
    runtime.scorer.score("web")
    outcome = runtime.trainer.train("web")
    assert outcome.result == "success", outcome.message
    second = repo.active_model("web", with_weights=False)
    assert second is not None and second.version == 2
    assert not second.meta["report"]["wide_scale"]["used"]
    assert "trimmed_rows" not in second.meta["report"]
