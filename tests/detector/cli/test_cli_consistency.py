"""The command line as a new user meets it (issue 28, finding 11): one answer for an unknown detector, usage errors
for flags that contradict each other, tables without raw floats or `None`, a progress bar that ends where training
did, JSON where tables are, a verdict that can be taken back, and `{"error": ...}` bodies for every API error.

Each `vigil` command runs as a subprocess on a config and a SQLite file with a trained `web` detector.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from detector.api.app import create_app
from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.store.types import OutlierFilter
from tests.detector.api.test_export import T1, flagged, trained_runtime
from tests.detector.cli.test_cli import web_records
from tests.detector.conftest import HTTP_DETECTOR
from tests.support.config import heading, write_config_file

Run = Callable[..., subprocess.CompletedProcess[str]]
UNKNOWN = "unknown detector 'nope' (configured: web)"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "VIGIL_CONFIG"}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "detector.cli.main", *args]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.toml, its SQLite store with a trained `web` model and 21 outliers (the first with 60 extra
    fields), and some files to score."""
    directory = tmp_path_factory.mktemp("cli-consistency")
    runtime = trained_runtime(directory)
    [wide] = flagged(1, T1 - timedelta(days=1), prefix="wide")
    assert runtime.vigil.ingest("web", [{**wide, **{f"x{i:02d}": i for i in range(60)}}], "http").accepted == 1
    assert runtime.vigil.ingest("web", flagged(20, T1), "http").accepted == 20
    runtime.vigil.repo.dispose()
    pd.DataFrame(web_records(5, seed=3, start=2000)).to_csv(directory / "in.csv", index=False)
    return directory


@pytest.fixture(scope="module")
def runtime(folder: Path) -> Runtime:
    """A runtime on the same store, to look at what the commands stored."""
    return build_runtime(load_config(folder / "config.toml"), CollectorRegistry(), with_process_metrics=False)


@pytest.fixture
def vigil(folder: Path) -> Run:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_command(*args), cwd=folder, env=_env(), capture_output=True, text=True, timeout=180,
                              check=False)

    return run


def run_all(folder: Path, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Several commands at once (each process spends seconds importing torch)."""
    procs = [subprocess.Popen(_command(*args), cwd=folder, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for args in commands]
    results = []
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
    return results


def outlier_ids(runtime: Runtime) -> list[int]:
    rows, _ = runtime.vigil.repo.reviews.query(OutlierFilter(detector="web"), 100, 0)
    return sorted(o.id for o in rows)


def review(runtime: Runtime, outlier_id: int) -> tuple[str, str | None, Any, str | None]:
    detail = runtime.vigil.repo.reviews.detail(outlier_id)
    assert detail is not None
    return detail.outlier.review_state, detail.reviewer, detail.reviewed_at, detail.review_note


# --- one answer for an unknown detector, and usage errors ---------------------------------------------------------

DETECTOR_COMMANDS: list[tuple[str, ...]] = [
    ("outliers", "list", "-d", "nope"), ("outliers", "export", "-d", "nope"), ("models", "list", "-d", "nope"),
    ("models", "show", "1", "-d", "nope"), ("models", "promote", "1", "-d", "nope"), ("models", "rollback", "nope"),
    ("train", "nope"), ("score", "in.csv", "-d", "nope"), ("check-data", "nope"),
    ("check-data", "nope", "--file", "in.csv"), ("evaluate", "in.csv", "in.csv", "-d", "nope"), ("report", "nope"),
    ("tune", "nope"), ("maintenance", "add", "nope", "--start", "2025-03-03T00:00Z", "--end", "2025-03-03T01:00Z"),
    ("maintenance", "list", "nope"), ("maintenance", "remove", "nope", "1"),
]


def test_an_unknown_detector_is_the_same_usage_error_in_every_command(folder: Path) -> None:
    for args, result in zip(DETECTOR_COMMANDS, run_all(folder, *DETECTOR_COMMANDS), strict=True):
        assert result.returncode == 2, (args, result.returncode, result.stdout, result.stderr)
        assert result.stdout == "", args
        assert UNKNOWN in result.stderr, (args, result.stderr)
        assert result.stderr.startswith(f"Usage: vigil {args[0]}"), (args, result.stderr)
        assert "Traceback" not in result.stderr, args
    assert not (folder / "vigil-report-nope.html").exists()


def test_review_takes_exactly_one_verdict_flag(vigil: Run, runtime: Runtime) -> None:
    first = outlier_ids(runtime)[0]
    both = vigil("outliers", "review", str(first), "--confirm", "--dismiss")
    assert both.returncode == 2
    assert "give exactly one of --confirm, --dismiss or --unreview (got 2)" in both.stderr
    assert review(runtime, first)[0] == "unreviewed", "nothing stored"
    none = vigil("outliers", "review", str(first))
    assert none.returncode == 2 and "give exactly one of" in none.stderr


def test_a_config_error_names_the_bad_detector_name_only(vigil: Run, folder: Path) -> None:
    text = (folder / "config.toml").read_text(encoding="utf-8").replace("detectors.web", "detectors.Web")
    (folder / "upper.toml").write_text(text, encoding="utf-8")
    result = vigil("config", "check", "--config", "upper.toml")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("vigil: invalid config upper.toml: detectors: detector name 'Web' must be lower case")
    assert "{" not in line and "features" not in line and "numeric" not in line, line


def test_help_names_the_default_hybrid_score(vigil: Run) -> None:
    result = vigil("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "hybrid score" in text
    assert "scores every new record by reconstruction error" not in text


def test_show_lists_the_first_other_fields_of_a_long_record(vigil: Run, runtime: Runtime) -> None:
    wide = outlier_ids(runtime)[0]
    result = vigil("outliers", "show", str(wide))
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("other fields: ")]
    assert line.startswith("other fields: x00=0, x01=1, ")
    assert line.endswith("x49=49 ... and 10 more (--json shows them all)"), line
    full = json.loads(vigil("outliers", "show", str(wide), "--json").stdout)
    assert len(full["fields"]) == 60 + 5


# --- vigil score: a failure is a failure, and a table is a table --------------------------------------------------


def test_score_fails_when_every_record_is_rejected(vigil: Run, folder: Path) -> None:
    rows = web_records(4, seed=4, start=3000)
    pd.DataFrame([{**r, "cpu": "lots"} for r in rows]).to_csv(folder / "allbad.csv", index=False)
    result = vigil("score", "allbad.csv", "-d", "web")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == ("vigil: file allbad.csv: none of its 4 records could be scored, every one was rejected by "
                        "web's schema")
    assert lines[1] == "  rejected: record 0: field 'cpu': expected a number, got 'lots'"


def test_score_prints_a_table(vigil: Run) -> None:
    result = vigil("score", "in.csv", "-d", "web")
    assert result.returncode == 0, result.stderr
    header, rule, *rows = result.stdout.splitlines()
    assert header.split() == ["ts", "key", "load", "cpu", "latency", "region", "healthy", "score", "is_outlier",
                              "top_feature"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert len(rows) == 5
    for row in rows:
        cells = row.split()
        assert cells[8] in ("yes", "no"), row
        for number in [*cells[2:5], cells[7]]:
            assert re.fullmatch(r"-?\d+(\.\d+)?", number) and len(number.replace("-", "").replace(".", "")) <= 5, row


# --- tables: models list, check-data; JSON where there are tables ------------------------------------------------


def test_models_and_maintenance_lists_have_json_and_short_numbers(vigil: Run, folder: Path) -> None:
    models, as_json = run_all(folder, ("models", "list"), ("models", "list", "--json"))
    assert models.returncode == 0, models.stderr
    header, _rule, row = models.stdout.splitlines()
    val_loss = row.split()[header.split().index("val") if "val" in header.split() else 7]
    assert re.fullmatch(r"\d\.\d{1,4}|\d+", val_loss), row
    assert as_json.returncode == 0, as_json.stderr
    [line] = as_json.stdout.splitlines()
    model = json.loads(line)
    assert (model["detector"], model["version"], model["status"], model["records"]) == ("web", 1, "active", 300)
    assert isinstance(model["val_loss"], float) and isinstance(model["threshold"], float)

    added = vigil("maintenance", "add", "web", "--start", "2025-03-03T02:00Z", "--end", "2025-03-03T03:00Z",
                  "--reason", "db upgrade")
    assert added.returncode == 0, added.stderr
    listed = vigil("maintenance", "list", "web", "--json")
    assert listed.returncode == 0, listed.stderr
    [window] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (window["detector"], window["reason"]) == ("web", "db upgrade")
    assert window["start"] == "2025-03-03T02:00:00+00:00" and window["end"] == "2025-03-03T03:00:00+00:00"


def test_check_data_prints_counts_and_skipped_checks(folder: Path) -> None:
    pd.DataFrame(web_records(12_345)).to_csv(folder / "big.csv", index=False)
    pd.DataFrame(web_records(60)).drop(columns=["ts"]).to_csv(folder / "no-ts.csv", index=False)
    big, no_ts = run_all(folder, ("check-data", "--file", "big.csv"), ("check-data", "--file", "no-ts.csv"))
    assert big.returncode in (0, 1), big.stderr
    rows = {line.split()[0]: line.split() for line in big.stdout.splitlines()[2:] if line.strip()}
    assert rows["rows"][2] == "12345", big.stdout
    assert "e+" not in big.stdout
    assert no_ts.returncode in (0, 1), no_ts.stderr
    assert "None" not in no_ts.stdout
    skipped = [line for line in no_ts.stdout.splitlines() if line.startswith("hour_coverage")]
    assert skipped and skipped[0].split()[1:4] == ["skipped", "-", "-"], no_ts.stdout
    assert "skipped: no timestamps given" in skipped[0]


# --- vigil train: the bar ends where training did ----------------------------------------------------------------


def run_on_pty(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run with stderr on a terminal (so click draws its progress bar); returns status, stdout, stderr."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:                     # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read().decode()
    return proc.wait(timeout=60), out, b"".join(chunks).decode(errors="replace")


def test_train_progress_bar_never_passes_its_length(tmp_path: Path) -> None:
    early = HTTP_DETECTOR.replace("epochs = 30", "epochs = 500").replace("patience = 5", "patience = 1")
    path = write_config_file(tmp_path / "config.toml", heading(), early)
    runtime = build_runtime(load_config(path), CollectorRegistry(), with_process_metrics=False)
    runtime.vigil.ingest("web", web_records(300), "http")
    status, out, err = run_on_pty(_command("train", "web"), tmp_path)
    assert status == 0, err
    assert out.strip() == "success: model version 1 active"
    model = runtime.vigil.repo.active_model("web")
    assert model is not None
    report = model.meta["report"]
    assert report["stopped_early"], "patience = 1 should stop well before 500 epochs"
    positions = [(int(a), int(b)) for a, b in re.findall(r"\b(\d+)/(\d+)\b", err)]
    assert positions, err
    assert all(done <= total for done, total in positions), positions[-5:]
    assert positions[-1] == (report["epochs_run"], report["epochs_run"]), positions[-5:]
    assert f"stopped early at epoch {report['epochs_run']} of at most 500" in err
    runtime.vigil.repo.dispose()


# --- a verdict can be taken back (CLI and API); it leaves the training window again -------------------------------


def test_unreview_clears_the_verdict_in_the_cli_and_the_api(vigil: Run, runtime: Runtime) -> None:
    ids = outlier_ids(runtime)
    one, two = ids[-1], ids[-2]
    record_id = runtime.vigil.repo.reviews.detail(one).outlier.record_id      # type: ignore[union-attr]
    det = runtime.config.detectors["web"]
    since = T1 - timedelta(days=30)

    def in_training_window() -> bool:
        records = runtime.vigil.repo.training_window("web", since, 10_000, det.review.states_into_training)
        return record_id in {r.id for r in records}

    assert not in_training_window(), "an unreviewed outlier is not trained on"
    dismissed = vigil("outliers", "review", str(one), "--dismiss", "--note", "batch job", "--reviewer", "ana")
    assert dismissed.returncode == 0, dismissed.stderr
    state, reviewer, reviewed_at, note = review(runtime, one)
    assert (state, reviewer, note) == ("dismissed", "ana", "batch job") and reviewed_at is not None
    assert in_training_window(), "a dismissed outlier joins the training window as normal"

    taken_back = vigil("outliers", "review", str(one), "--unreview")
    assert taken_back.returncode == 0, taken_back.stderr
    assert taken_back.stdout.strip() == f"unreviewed: {one}"
    assert review(runtime, one) == ("unreviewed", None, None, None)
    assert not in_training_window(), "back out of the training window"

    with TestClient(create_app(runtime, manage_jobs=False)) as client:
        auth = {"Authorization": f"Bearer {runtime.token}"}
        assert client.post(f"/v1/outliers/{two}/review", json={"verdict": "confirmed"}, headers=auth).status_code == 200
        answer = client.post(f"/v1/outliers/{two}/review", json={"verdict": "unreviewed", "note": "not sure yet"},
                             headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"updated": [two], "missing": [], "verdict": "unreviewed"}
        assert review(runtime, two) == ("unreviewed", None, None, "not sure yet")
        assert client.get(f"/v1/outliers/{two}").json()["review"] == {
            "state": "unreviewed", "note": "not sure yet", "reviewer": None, "reviewed_at": None}


# --- every API error is {"error": ...} ------------------------------------------------------------------------------


def test_api_errors_are_error_bodies(runtime: Runtime) -> None:
    with TestClient(create_app(runtime, manage_jobs=False)) as client:
        missing = client.post("/v1/outliers/review", json={"ids": [1], "verdict": "confirmed"})
        wrong = client.post("/v1/outliers/review", json={"ids": [1], "verdict": "confirmed"},
                            headers={"Authorization": "Bearer nope"})
        unknown_outlier = client.get("/v1/outliers/987654321")
        bad_window = client.post("/v1/detectors/web/maintenance", headers={"Authorization": f"Bearer {runtime.token}"},
                                 json={"start": "2025-03-03T02:00:00Z", "end": "2025-03-03T01:00:00Z"})
        no_route = client.get("/v1/nowhere")
    for answer in (missing, wrong):
        assert answer.status_code == 401
        assert answer.json() == {"error": "missing or wrong bearer token"}
        assert answer.headers["www-authenticate"] == "Bearer"
    assert (unknown_outlier.status_code, unknown_outlier.json()) == (404, {"error": "no outlier 987654321"})
    assert bad_window.status_code == 422
    assert bad_window.json() == {"error": "a maintenance window must end after it starts"}
    assert (no_route.status_code, no_route.json()) == (404, {"error": "Not Found"})
