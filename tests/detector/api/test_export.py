"""The outliers CSV export (issue 28, finding 9), through the API on a real uvicorn server and through the CLI.

It is streamed: read from the store a bounded page at a time with a keyset cursor on (ts, id), so that it holds
one page in memory and stays consistent while outliers arrive; text a spreadsheet would run as a formula is
neutralised in both; `vigil outliers export` says when more outliers match than its --limit wrote.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, event

from detector.api.app import create_app
from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.review import CSV_COLUMNS, EXPORT_PAGE_ROWS, spreadsheet_safe
from detector.store.types import OutlierFilter
from tests.detector.api.test_review_page import Server
from tests.detector.cli.test_cli import web_records
from tests.detector.conftest import HTTP_DETECTOR
from tests.support.config import heading, write_config_file

T1 = datetime(2025, 3, 6, tzinfo=UTC)           # the flagged records come after web_records' normal ones
N_FLAGGED = 2_500                               # more than two export pages
SAME_TS = 500                                   # flagged records share a timestamp 500 at a time: ties on ts

# key -> what a spreadsheet-safe export writes
FORMULAS = {"=1+2": "'=1+2", "+SUM(A1:A9)": "'+SUM(A1:A9)", "-2+3": "'-2+3",
            "@cmd|' /C calc'!A0": "'@cmd|' /C calc'!A0", "\tTAB": "'\tTAB", "\rCR": "'\rCR", "-3.5": "-3.5",
            "+7": "+7", "web-1": "web-1", "a=b": "a=b"}


def flagged(n: int, start: datetime, prefix: str = "h") -> list[dict[str, Any]]:
    """Records far from normal (cpu far below what load implies): each one becomes an outlier."""
    return [{"ts": (start + timedelta(minutes=i // SAME_TS)).isoformat(), "host": f"{prefix}{i}", "load": 90.0,
             "cpu": 2.0, "latency": 22.0, "region": "eu"} for i in range(n)]


def trained_runtime(directory: Path, store_url: str | None = None) -> Runtime:
    path = write_config_file(directory / "config.toml", heading(store_url=store_url), HTTP_DETECTOR)
    runtime = build_runtime(load_config(path), CollectorRegistry(), with_process_metrics=False)
    runtime.vigil.ingest("web", web_records(300), "http")
    outcome = runtime.trainer.train("web")
    assert outcome.result == "success", outcome.message
    return runtime


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """A trained `web` detector on a SQLite file with N_FLAGGED outliers plus one per FORMULAS key."""
    rt = trained_runtime(tmp_path_factory.mktemp("export"))
    result = rt.vigil.ingest("web", flagged(N_FLAGGED, T1), "http")
    assert result.accepted == N_FLAGGED
    tricky = [{**r, "host": key} for r, key in zip(flagged(len(FORMULAS), T1 + timedelta(days=1)), FORMULAS,
                                                   strict=True)]
    assert rt.vigil.ingest("web", tricky, "http").accepted == len(FORMULAS)
    assert rt.vigil.repo.counts()["web"].outliers == N_FLAGGED + len(FORMULAS)
    return rt


@pytest.fixture(scope="module")
def server(runtime: Runtime) -> Iterator[Server]:
    with Server(runtime) as srv:
        yield srv


class OutlierQueries:
    """The LIMIT of every SELECT on the outliers table that any engine of this process runs meanwhile."""

    def __init__(self) -> None:
        self.limits: list[int] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        flat = " ".join(statement.split())
        if flat.startswith("SELECT") and "FROM outliers" in flat and " LIMIT " in flat:
            values = list(params.values()) if isinstance(params, dict) else list(params)
            self.limits.append(int(values[-2] if flat.endswith("OFFSET ?") or flat.endswith("OFFSET %(param_2)s")
                                   else values[-1]))

    def __enter__(self) -> OutlierQueries:
        event.listen(Engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self)


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def store_order(runtime: Runtime, f: OutlierFilter | None = None) -> list[int]:
    views, _ = runtime.vigil.repo.reviews.query(f or OutlierFilter(), 100_000, 0, "ts", True)
    return [v.id for v in views]


# --- the API: streamed, bounded pages, consistent order ---------------------------------------------------------


def get(server: Server, **params: Any) -> tuple[int, dict[str, str], str]:
    """GET /v1/outliers.csv over a real socket: status, headers (lower-case names) and body."""
    url = server.url + "/v1/outliers.csv" + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


def test_api_export_is_streamed_from_bounded_pages(server: Server, runtime: Runtime) -> None:
    with OutlierQueries() as queries:
        status, headers, text = get(server, limit=100_000)
    assert status == 200
    assert headers["content-type"].startswith("text/csv")
    assert headers["content-disposition"] == 'attachment; filename="outliers.csv"'
    assert "content-length" not in headers, "the whole file was built before it was sent"
    assert headers.get("transfer-encoding") == "chunked"
    rows = rows_of(text)
    assert list(rows[0]) == CSV_COLUMNS
    ids = [int(r["id"]) for r in rows]
    assert ids == store_order(runtime), "newest first (ts, then id), each outlier once"
    assert len(ids) == N_FLAGGED + len(FORMULAS)
    assert queries.limits, "no query seen"
    assert max(queries.limits) <= EXPORT_PAGE_ROWS, f"a query read {max(queries.limits)} rows at once"
    assert len(queries.limits) >= len(ids) // EXPORT_PAGE_ROWS


def test_api_export_keeps_its_limit_and_filters(server: Server, runtime: Runtime) -> None:
    status, _, text = get(server, limit=1_234)
    assert status == 200
    assert [int(r["id"]) for r in rows_of(text)] == store_order(runtime)[:1_234]
    status, _, text = get(server, until=(T1 + timedelta(minutes=2)).isoformat(), limit=5_000)
    assert len(rows_of(text)) == 2 * SAME_TS
    status, _, text = get(server, key="nobody")
    assert status == 200 and text.strip() == ",".join(CSV_COLUMNS)
    status, _, text = get(server, detector="nope")
    assert status == 404 and "unknown detector 'nope'" in json.loads(text)["error"]


def test_export_pages_stay_consistent_while_outliers_arrive(store_url: str, tmp_path: Path) -> None:
    """On both stores, every outlier there when the export began is written once, in order, though newer ones
    arrive between its pages (an offset would shift and write some twice)."""
    rt = trained_runtime(tmp_path, store_url)
    try:
        rt.vigil.ingest("web", flagged(250, T1), "http")
        before = store_order(rt)
        export = rt.vigil.reviews.export(OutlierFilter(detector="web"), 10_000, page_rows=100)
        first = export.next_chunk()
        assert first is not None
        rt.vigil.ingest("web", flagged(150, T1 + timedelta(days=3), prefix="late"), "http")   # newer: listed first
        ids = [int(r["id"]) for r in rows_of(first + "".join(export))]
        assert ids == before
        assert (export.written, export.more) == (250, False)
        assert len(store_order(rt)) == 400
    finally:
        rt.vigil.repo.dispose()


def test_an_export_merges_every_detector_in_the_store_newest_first(tmp_path: Path) -> None:
    """Without a detector filter, each detector's outliers are read through its own index cursor and merged:
    the rows come in the same order as one sort of the whole table, each once, including the outliers of a
    detector no longer configured."""
    two = HTTP_DETECTOR + HTTP_DETECTOR.replace("[detectors.web", "[detectors.api")
    path = write_config_file(tmp_path / "config.toml", heading(), two)
    rt = build_runtime(load_config(path), CollectorRegistry(), with_process_metrics=False)
    for name in ("web", "api"):
        rt.vigil.ingest(name, web_records(300), "http")
        assert rt.trainer.train(name).result == "success"
    for name, start in (("web", T1), ("api", T1 + timedelta(seconds=30)), ("api", T1)):   # interleaved, and ties
        assert rt.vigil.ingest(name, flagged(700, start, prefix=name), "http").accepted == 700
    rt.vigil.repo.dispose()
    path.write_text(path.read_text(encoding="utf-8").replace(HTTP_DETECTOR.replace("[detectors.web", "[detectors.api"),
                                                              ""), encoding="utf-8")
    only_web = build_runtime(load_config(path), CollectorRegistry(), with_process_metrics=False)
    assert list(only_web.config.detectors) == ["web"]
    order = store_order(only_web)
    assert len(order) == 2_100
    with OutlierQueries() as queries:
        export = only_web.vigil.reviews.export(OutlierFilter(), 10_000, page_rows=200)
        rows = rows_of("".join(export))
    assert [int(r["id"]) for r in rows] == order
    assert {r["detector"] for r in rows} == {"web", "api"}
    assert max(queries.limits) <= 200
    cut = only_web.vigil.reviews.export(OutlierFilter(), 999, page_rows=200)
    assert [int(r["id"]) for r in rows_of("".join(cut))] == order[:999]
    assert (cut.written, cut.more) == (999, True)
    only_web.vigil.repo.dispose()


# --- formulas: neutralised in the API's and the CLI's CSV -------------------------------------------------------


def test_spreadsheet_safe_leaves_numbers_and_plain_text() -> None:
    for key, safe in FORMULAS.items():
        assert spreadsheet_safe(key) == safe, key
    for value in (-3.5, 2, 0.0, None, True, "", "{\"a\": \"=1\"}", "-", "-.5", "-1e5", "1-2"):
        expected = "'-" if value == "-" else value
        assert spreadsheet_safe(value) == expected, value


def test_formula_cells_are_neutralised_in_the_api_and_the_cli(runtime: Runtime) -> None:
    f = {"since": (T1 + timedelta(days=1)).isoformat()}
    with TestClient(create_app(runtime, manage_jobs=False)) as client:
        api = client.get("/v1/outliers.csv", params=f)
    assert api.status_code == 200
    cli = subprocess.run([sys.executable, "-m", "detector.cli.main", "outliers", "export", "--since", f["since"]],
                         cwd=runtime.config.daemon.state_dir.parent, env=_env(), capture_output=True, timeout=120,
                         check=False)                      # bytes: a CR in a cell must reach the check as CR
    assert cli.returncode == 0, cli.stderr
    for text in (api.text, cli.stdout.decode("utf-8")):
        rows = rows_of(text)
        assert sorted(r["key"] for r in rows) == sorted(FORMULAS.values())
        for r in rows:
            float(r["score"]), float(r["threshold"]), int(r["model_version"])    # numbers stay numbers
            assert r["fields"].startswith("{") and r["expected"].startswith("{")


# --- the CLI: streamed to a file, and says when more match ---------------------------------------------------


def test_cli_export_says_when_more_outliers_match_than_its_limit(runtime: Runtime) -> None:
    folder = runtime.config.daemon.state_dir.parent
    cut = _cli(folder, "outliers", "export", "-n", "1200", "-o", "cut.csv")
    total = N_FLAGGED + len(FORMULAS)
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout == ""
    lines = cut.stderr.strip().splitlines()
    assert lines == ["1200 outliers written to cut.csv",
                     f"vigil: stopped at --limit 1200: {total} outliers match; raise --limit or narrow the filters "
                     "(--since, --until, -d, --review-state) for the rest"]
    assert [int(r["id"]) for r in rows_of((folder / "cut.csv").read_text(encoding="utf-8"))] == \
        store_order(runtime)[:1200]
    assert not list(folder.glob(".*.partial"))

    whole = _cli(folder, "outliers", "export", "-n", str(total))
    assert whole.returncode == 0, whole.stderr
    assert "stopped at" not in whole.stderr
    assert len(rows_of(whole.stdout)) == total


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "VIGIL_CONFIG"}


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector.cli.main", *args], cwd=folder, env=_env(),
                          capture_output=True, text=True, timeout=120, check=False)
