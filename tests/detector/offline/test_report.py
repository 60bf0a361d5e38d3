"""`vigil report`: an HTML page with four plots, each with data, written from a real store with a trained demo model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.offline.report import distinct_incidents, latent_map
from detector.sources.demo import DemoSource
from detector.store.types import OutlierView
from tests.support.browser import CHROMIUM, playwright
from tests.support.demo import NOW, FakeClock, demo_source_config, write_demo_config

SECTIONS = ("loss", "scores", "latent", "reconstructions")
EPOCHS = 12


@dataclass
class Section:
    svgs: int = 0
    marks: dict[str, int] = field(default_factory=dict)
    empty_notes: int = 0
    series: list[str] = field(default_factory=list)
    thresholds: int = 0


class ReportParser(HTMLParser):
    """Counts, per report section, its SVG charts and their marks; notes anything that could load or run."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, Section] = {}
        self.current: str | None = None
        self.scripts = 0
        self.external: list[str] = []
        self.csp: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.current = a.get("id")
            self.sections[self.current or ""] = Section()
        if tag == "script":
            self.scripts += 1
        if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy":
            self.csp = a.get("content")
        self.external += [f"{tag} {k}={v}" for k, v in attrs
                          if k in ("src", "href", "xlink:href", "action", "data") or (k or "").startswith("on")]
        if self.current is None:
            return
        section = self.sections[self.current]
        classes = (a.get("class") or "").split()
        if tag == "svg":
            section.svgs += 1
        if "mark" in classes:
            kind = "outlier" if "outlier" in classes else next(c for c in classes if c != "mark")
            section.marks[kind] = section.marks.get(kind, 0) + 1
            if "line" in classes:
                section.series.append(a.get("data-series") or "")
        if "empty" in classes:
            section.empty_notes += 1
        if "threshold" in classes:
            section.thresholds += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.current = None


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Runtime]]:
    """A SQLite store with 12 h of demo records of 2 hosts, a trained model and every record scored."""
    directory = tmp_path_factory.mktemp("report")
    config = load_config(write_demo_config(directory, epochs=EPOCHS, patience=EPOCHS))
    runtime = build_runtime(config, CollectorRegistry(), with_process_metrics=False)
    n = DemoSource(demo_source_config(runtime), runtime.vigil.sink("demo", "demo"), clock=FakeClock(NOW)).poll()
    outcome = runtime.trainer.train("demo", "first")
    assert outcome.result == "success", outcome.message
    assert runtime.scorer.score("demo") == n
    yield directory, runtime
    runtime.vigil.repo.dispose()


def vigil(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_CONFIG"}
    return subprocess.run([sys.executable, "-m", "detector.cli.main", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(demo_store: tuple[Path, Runtime]) -> tuple[Path, str]:
    directory, _ = demo_store
    result = vigil(directory, "report", "demo", "--output", "out/demo.html", "--records", "1000", "--top", "4")
    assert result.returncode == 1, "the output folder does not exist yet"
    (directory / "out").mkdir()
    result = vigil(directory, "report", "demo", "--output", "out/demo.html", "--records", "1000", "--top", "4")
    assert result.returncode == 0, result.stderr
    return directory / "out" / "demo.html", result.stdout


def test_report_has_four_plots_with_data(report: tuple[Path, str], demo_store: tuple[Path, Runtime]) -> None:
    path, stdout = report
    _, runtime = demo_store
    repo = runtime.vigil.repo
    model = repo.active_model("demo", with_weights=False)
    assert model is not None
    recent = repo.recent_scored("demo", 1000, model.id)
    flagged = sum(1 for _, _, f in recent if f)
    assert len(recent) == 1000
    assert 0 < flagged < 100
    assert stdout.strip() == (f"out/demo.html: demo model v1, 1000 recent scores ({flagged} outliers), "
                              "4 top outliers")

    html = path.read_text(encoding="utf-8")
    parser = ReportParser()
    parser.feed(html)
    assert parser.scripts == 0
    assert parser.external == [], "nothing to fetch: no src, href or event handler"
    assert parser.csp is not None and "default-src 'none'" in parser.csp
    assert list(parser.sections) == list(SECTIONS)
    loss, scores, latent, reconstructions = (parser.sections[s] for s in SECTIONS)
    assert all(s.empty_notes == 0 for s in parser.sections.values())

    epochs_run = model.meta["report"]["epochs_run"]
    assert 1 <= epochs_run <= EPOCHS
    assert (loss.svgs, loss.series, loss.marks) == (1, ["training", "validation"], {"line": 2})

    assert scores.svgs == 1 and scores.thresholds == 1
    assert 5 <= scores.marks["bar"] <= 40

    assert latent.svgs == 1
    assert latent.marks == {"point": 1000 - flagged, "outlier": flagged}

    assert reconstructions.svgs == 4
    assert reconstructions.marks["bar"] >= 4 * 2 * 6 - 4, "actual and expected of six numeric features each"
    for heading in ("Vigil report: demo", "model version", "threshold", "training window", "training run"):
        assert f"{heading}</" in html
    problems = [c for c in model.meta["diversity"]["checks"] if c["status"] != "ok"]
    assert problems, "12 hours of 2 hosts miss most weekdays"
    assert "<h2>Diversity warnings</h2>" in html
    for problem in problems:
        assert f"<b>{problem['check']}</b> ({problem['status']})" in html


def test_report_errors(demo_store: tuple[Path, Runtime]) -> None:
    directory, _ = demo_store
    unknown = vigil(directory, "report", "nope")
    assert unknown.returncode == 2          # one answer for an unknown detector in every command (#28, finding 11)
    assert "unknown detector 'nope' (configured: demo)" in unknown.stderr


@pytest.mark.slow
def test_report_opens_in_chromium_without_network(report: tuple[Path, str]) -> None:
    """The page renders its charts in a real browser and asks for nothing beyond the file itself."""
    sync_api = playwright("the report browser test")
    path, _ = report
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(offline=True, java_script_enabled=False)
            page = context.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri())
            boxes = [page.locator(f"#{s} svg").first.bounding_box() for s in SECTIONS]
            marks = page.locator("svg .mark").count()
        finally:
            browser.close()
    assert requests == [path.as_uri()]
    assert all(box is not None and box["width"] > 200 and box["height"] > 150 for box in boxes)
    assert marks > 1000


def test_latent_map_keeps_2d_codes_and_projects_wider_ones() -> None:
    rng = np.random.default_rng(0)
    two = rng.normal(size=(50, 2)).astype(np.float32)
    xy, labels = latent_map(two)
    assert np.allclose(xy, two) and labels == ("latent 1", "latent 2")

    direction = np.array([3.0, 4.0, 0.0, 0.0]) / 5.0
    wide = (np.outer(rng.normal(0, 10, 200), direction) + rng.normal(0, 0.1, (200, 4))).astype(np.float32)
    xy, labels = latent_map(wide)
    assert xy.shape == (200, 2)
    assert xy[:, 0].var() > 100 * xy[:, 1].var(), "the first component holds the spread"
    assert labels[0].startswith("PC 1 (100 %") or labels[0].startswith("PC 1 (99 %")

    xy, labels = latent_map(rng.normal(size=(5, 1)).astype(np.float32))
    assert xy.shape == (5, 2) and not xy[:, 1].any()


def test_distinct_incidents_skips_neighbours_of_the_same_key() -> None:
    t0 = datetime(2025, 3, 3, tzinfo=UTC)

    def outlier(i: int, key: str, minutes: int) -> OutlierView:
        return OutlierView(id=i, record_id=i, detector="d", ts=t0 + timedelta(minutes=minutes), key=key, fields={},
                           score=10.0 - i, threshold=1.0, model_version=1, contributions=[], expected={},
                           review_state="unreviewed", created_at=t0)

    ranked = [outlier(0, "a", 0), outlier(1, "a", 5), outlier(2, "b", 5), outlier(3, "a", 90), outlier(4, "b", 6)]
    assert [o.id for o in distinct_incidents(ranked, 10)] == [0, 2, 3]
    assert [o.id for o in distinct_incidents(ranked, 2)] == [0, 2]


def test_outliers_show_ranks_every_feature_with_actual_and_expected(demo_store: tuple[Path, Runtime]) -> None:
    directory, runtime = demo_store
    model = runtime.vigil.repo.active_model("demo", with_weights=False)
    assert model is not None
    [o] = runtime.vigil.repo.top_outliers("demo", model.id, 1)
    shown = vigil(directory, "outliers", "show", str(o.id))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"outlier {o.id} of demo, key {o.key}, at {o.ts.isoformat()}"
    assert lines[1].startswith(f"score {o.score:.4g} against threshold {o.threshold:.4g} "
                               f"({o.score / o.threshold:.1f}x), model v1 trained ")
    start = next(i for i, line in enumerate(lines) if line.startswith("feature "))
    assert lines[start].split() == ["feature", "actual", "expected", "contribution", "share", "of", "score"]
    rows = [line.split() for line in lines[start + 2: start + 2 + 8]]
    features = ["request_rate", "p50_latency_ms", "p99_latency_ms", "error_rate", "cpu_pct", "memory_pct",
                "region", "status_class"]
    assert sorted(r[0] for r in rows) == sorted(features), "every feature, once"
    top = [c["feature"] for c in o.contributions]
    assert [r[0] for r in rows[: len(top)]] == top, "the explained features first, by contribution"
    contributions = [float(r[3]) for r in rows[: len(top)]]
    assert contributions == sorted(contributions, reverse=True)
    for row in rows:
        actual, expected = o.fields[row[0]], o.expected[row[0]]
        assert row[1] == (f"{actual:.4g}" if isinstance(actual, float) else str(actual))
        assert row[2] == (f"{expected:.4g}" if isinstance(expected, float) else str(expected))
    assert "(contributions are stored for the top 5 features" in shown.stdout
    assert lines[-1] == f"other fields: incident={o.fields['incident']}"
    missing = vigil(directory, "outliers", "show", "999999")
    assert (missing.returncode, missing.stderr.strip()) == (1, "vigil: no outlier 999999")
