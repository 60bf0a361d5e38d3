"""Reviewing outliers: the API, verdicts that teach the model, maintenance windows, CLI, access."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from detector.daemon import Runtime
from detector.store.types import OutlierFilter

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def normal(n: int, seed: int, start: datetime = T0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        load = float(rng.uniform(10, 100))
        out.append({"ts": (start + timedelta(minutes=i)).isoformat(), "host": f"h{i % 3}", "load": load,
                    "cpu": 0.8 * load + float(rng.normal(0, 2)), "latency": 20 + 0.05 * load + float(rng.normal(0, 3)),
                    "region": "eu" if i % 2 else "us", "healthy": True})
    return out


def new_region(n: int, seed: int, start: datetime) -> list[dict[str, Any]]:
    """A pattern people will dismiss: a new region whose hosts are slower (higher latency), load as usual."""
    return [dict(r, region="apac", latency=r["latency"] + 45.0, kind="new_region") for r in normal(n, seed, start)]


def broken_cpu(n: int, seed: int, start: datetime) -> list[dict[str, Any]]:
    """A pattern people will confirm: CPU pinned at 95 % while the load is low."""
    return [dict(r, load=12.0 + i % 5, cpu=95.0, kind="broken_cpu") for i, r in enumerate(normal(n, seed, start))]


def trained(runtime: Runtime) -> Runtime:
    runtime.vigil.ingest("web", normal(600, 1), "http")
    assert runtime.trainer.train("web").result == "success"
    runtime.scorer.score("web")
    return runtime


def flagged(runtime: Runtime, kind: str) -> list[Any]:
    rows, _ = runtime.vigil.repo.reviews.query(OutlierFilter(detector="web"), limit=10_000)
    return [o for o in rows if o.fields.get("kind") == kind]


def test_dismissed_pattern_is_learnt_and_confirmed_one_still_flagged(runtime: Runtime, client: TestClient,
                                                                     auth: dict[str, str]) -> None:
    trained(runtime)
    later = T0 + timedelta(days=1)
    runtime.vigil.ingest("web", new_region(40, 2, later) + broken_cpu(40, 3, later + timedelta(hours=1)), "http")
    runtime.scorer.score("web")
    dismiss, confirm = flagged(runtime, "new_region"), flagged(runtime, "broken_cpu")
    assert len(dismiss) >= 30 and len(confirm) >= 30
    for ids, verdict in (([o.id for o in dismiss], "dismissed"), ([o.id for o in confirm], "confirmed")):
        answer = client.post("/v1/outliers/review", json={"ids": ids, "verdict": verdict, "reviewer": "ops"},
                             headers=auth)
        assert answer.status_code == 200 and sorted(answer.json()["updated"]) == sorted(ids)

    outcome = runtime.trainer.train("web")
    assert outcome.result == "success"
    tuning = runtime.vigil.repo.active_model("web", with_weights=False).meta["report"].get("review_tuning")
    assert tuning is not None and tuning["confirmed"] == len(confirm) and tuning["dismissed"] == len(dismiss)
    scoring = runtime.vigil.repo.active_model("web", with_weights=False).meta["report"]["scoring"]
    assert scoring["confirmed_outliers"] == len(confirm) and scoring["review_weight"] == 4.0

    again = T0 + timedelta(days=2)
    runtime.vigil.ingest("web", new_region(30, 4, again) + broken_cpu(30, 5, again + timedelta(hours=1)), "http")
    runtime.scorer.score("web")
    new_flags = {kind: len([o for o in flagged(runtime, kind) if o.ts >= again])
                 for kind in ("new_region", "broken_cpu")}
    assert new_flags["new_region"] <= 3          # dismissed: now normal
    assert new_flags["broken_cpu"] >= 27         # confirmed: still an anomaly
    precision = runtime.registry.get_sample_value("vigil_review_precision", {"detector": "web"})
    assert precision == len(confirm) / (len(confirm) + len(dismiss))
    assert runtime.registry.get_sample_value("vigil_review_verdicts_total",
                                             {"detector": "web", "verdict": "dismissed"}) == len(dismiss)


def test_review_api_one_outlier_in_full_and_csv(runtime: Runtime, client: TestClient, auth: dict[str, str]) -> None:
    trained(runtime)
    runtime.vigil.ingest("web", broken_cpu(5, 6, T0 + timedelta(hours=3)), "http")
    runtime.scorer.score("web")
    listing = client.get("/v1/outliers", params={"review_state": "unreviewed", "min_ratio": 1.0,
                                                 "sort": "ratio"}).json()
    assert listing["total"] >= 5
    ratios = [o["ratio"] for o in listing["outliers"]]
    assert ratios == sorted(ratios, reverse=True) and min(ratios) > 1.0
    target = flagged(runtime, "broken_cpu")[0]
    detail = client.get(f"/v1/outliers/{target.id}").json()
    assert detail["fields"]["cpu"] == 95.0 and detail["review"]["state"] == "unreviewed"
    assert detail["model"]["version"] == 1 and detail["model"]["window_records"] == 600
    assert any(h["ts"] == detail["ts"] and h["is_outlier"] for h in detail["history"])
    assert detail["contributions"][0]["feature"] in ("cpu", "load")
    answer = client.post(f"/v1/outliers/{target.id}/review",
                         json={"verdict": "confirmed", "note": "pinned CPU", "reviewer": "ana"}, headers=auth)
    assert answer.status_code == 200
    detail = client.get(f"/v1/outliers/{target.id}").json()
    assert detail["review"] | {"reviewed_at": None} == {"state": "confirmed", "note": "pinned CPU", "reviewer": "ana",
                                                         "reviewed_at": None}
    assert client.get("/v1/outliers/999999").status_code == 404
    assert client.post("/v1/outliers/999999/review", json={"verdict": "dismissed"}, headers=auth).status_code == 404
    assert client.post(f"/v1/outliers/{target.id}/review", json={"verdict": "maybe"}, headers=auth).status_code == 422
    rows = list(csv.DictReader(io.StringIO(client.get("/v1/outliers.csv", params={"review_state": "confirmed"}).text)))
    assert [int(r["id"]) for r in rows] == [target.id] and rows[0]["review_state"] == "confirmed"


def test_writes_without_a_valid_token_get_401_and_change_nothing(runtime: Runtime, client: TestClient) -> None:
    trained(runtime)
    runtime.vigil.ingest("web", broken_cpu(3, 7, T0 + timedelta(hours=5)), "http")
    runtime.scorer.score("web")
    target = flagged(runtime, "broken_cpu")[0]
    window = {"start": T0.isoformat(), "end": (T0 + timedelta(hours=1)).isoformat()}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        assert client.post(f"/v1/outliers/{target.id}/review", json={"verdict": "dismissed"},
                           headers=headers).status_code == 401
        assert client.post("/v1/outliers/review", json={"ids": [target.id], "verdict": "dismissed"},
                           headers=headers).status_code == 401
        assert client.post("/v1/detectors/web/maintenance", json=window, headers=headers).status_code == 401
    assert client.get(f"/v1/outliers/{target.id}").json()["review"]["state"] == "unreviewed"
    assert client.get("/v1/detectors/web/maintenance").json() == {"windows": []}


def test_maintenance_window_records_are_neither_flagged_nor_trained_on(
        runtime: Runtime, client: TestClient, auth: dict[str, str]) -> None:
    trained(runtime)
    start = T0 + timedelta(days=1)
    created = client.post("/v1/detectors/web/maintenance", headers=auth, json={
        "start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat(), "reason": "db upgrade"})
    assert created.status_code == 201
    runtime.vigil.ingest("web", broken_cpu(30, 8, start), "http")                        # inside the window
    runtime.vigil.ingest("web", broken_cpu(5, 9, start + timedelta(hours=2)), "http")    # after it
    runtime.scorer.score("web")
    inside = [o for o in flagged(runtime, "broken_cpu") if o.ts < start + timedelta(hours=1)]
    after = [o for o in flagged(runtime, "broken_cpu") if o.ts >= start + timedelta(hours=2)]
    assert inside == [] and len(after) == 5
    since = T0 - timedelta(days=1)
    window = runtime.vigil.repo.training_window("web", since, 10_000)
    assert all(r.fields.get("kind") != "broken_cpu" for r in window)
    windows = client.get("/v1/detectors/web/maintenance").json()["windows"]
    assert [(w["reason"], w["start"]) for w in windows] == [("db upgrade", start.isoformat())]
    assert client.delete(f"/v1/detectors/web/maintenance/{windows[0]['id']}", headers=auth).status_code == 200
    assert client.get("/v1/detectors/web/maintenance").json() == {"windows": []}


def test_cli_show_review_export_and_maintenance(runtime: Runtime, tmp_path: Path) -> None:
    trained(runtime)
    runtime.vigil.ingest("web", broken_cpu(3, 10, T0 + timedelta(hours=6)), "http")
    runtime.scorer.score("web")
    target = flagged(runtime, "broken_cpu")[0]

    def vigil(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "detector.cli.main", *args, "--config", "config.toml"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    shown = vigil("outliers", "show", str(target.id))
    assert shown.returncode == 0, shown.stderr
    assert "against threshold" in shown.stdout and "cpu" in shown.stdout and "95" in shown.stdout
    reviewed = vigil("outliers", "review", str(target.id), "--dismiss", "--note", "known batch job")
    assert reviewed.returncode == 0 and "dismissed" in reviewed.stdout
    assert runtime.vigil.repo.reviews.detail(target.id).review_note == "known batch job"
    assert vigil("outliers", "review", "424242", "--confirm").returncode == 1
    exported = vigil("outliers", "export", "--review-state", "dismissed")
    assert [int(r["id"]) for r in csv.DictReader(io.StringIO(exported.stdout))] == [target.id]
    added = vigil("maintenance", "add", "web", "--start", "2026-11-05T00:00:00Z", "--end", "2026-11-05T02:00:00Z",
                  "--reason", "upgrade")
    assert added.returncode == 0, added.stderr
    listed = vigil("maintenance", "list", "web")
    assert "upgrade" in listed.stdout and "2026-11-05T00:00:00+00:00" in listed.stdout
    bad = vigil("maintenance", "add", "web", "--start", "2026-11-05T02:00:00Z", "--end", "2026-11-05T00:00:00Z")
    assert bad.returncode == 2 and "end after it starts" in bad.stderr
