"""The review page in a real browser (Playwright and Debian's Chromium) against the real app on a real uvicorn.

One daemon-like server per module: a runtime on a real SQLite file with a trained model and scored outliers,
served by uvicorn in a background thread on a free 127.0.0.1 port. Each test opens a fresh browser context
(so a fresh sessionStorage) and checks what the page shows and what reached the database.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from detector.api.app import create_app
from detector.api.web import CONTENT_SECURITY_POLICY, STATIC
from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from detector.store.types import OutlierFilter
from tests.detector.conftest import HTTP_DETECTOR
from tests.support.config import heading, write_config_file

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

SCREENSHOT_COPY = Path("/tmp/vigil-review.png")

START = datetime(2025, 3, 3, tzinfo=UTC)
REGIONS = ("eu-west", "us-east", "ap-south")
N_NORMAL = 400
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '"><img src=x onerror="window.__pwned=1">'
ALERT = "<img src=x onerror=alert(1)><svg onload=alert(2)>"
DASH, TIMES = "\u2013", "\u00d7"                     # the page writes "1\u201350 of 80" and "\u00d7338"


# --- data: normal records to train on, then per-key anomalies that become outliers ---------------------------


def normal(n: int, start: datetime, seed: int, key: str | None = None) -> list[dict[str, Any]]:
    """cpu and latency follow load; one record a minute; four hosts unless a key is given."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        load = float(rng.uniform(0.2, 1.0))
        out.append({"ts": (start + timedelta(minutes=i)).isoformat(), "host": key or f"web-{i % 4}",
                    "load": round(load, 4), "cpu": round(10 + 70 * load + float(rng.normal(0, 2)), 3),
                    "latency": round(40 + 120 * load + float(rng.normal(0, 4)), 3),
                    "region": REGIONS[i % 3], "healthy": True})
    return out


def anomaly(ts: datetime, key: str, i: int = 0, **extra: Any) -> dict[str, Any]:
    """CPU pegged and latency ten times the normal at low load: over eight times the threshold."""
    return {"ts": ts.isoformat(), "host": key, "load": 0.3, "cpu": 99.0, "latency": 1500.0 + 10 * i,
            "region": "eu-west", "healthy": False, **extra}


def seed_data(runtime: Runtime) -> None:
    vigil = runtime.vigil
    result = vigil.ingest("web", normal(N_NORMAL, START, seed=0), "http", "http")
    assert result.accepted == N_NORMAL and not result.rejected
    outcome = runtime.trainer.train("web")
    assert outcome.result == "success", outcome.message
    t = START + timedelta(minutes=N_NORMAL + 10)
    batch: list[dict[str, Any]] = []
    for n, key in enumerate(("db-1", "db-2")):   # some normal history of the key, then three anomalies
        batch += normal(8, t + timedelta(hours=n), seed=n + 1, key=key)
        batch += [anomaly(t + timedelta(hours=n, minutes=10 + i), key, i) for i in range(3)]
    batch[-12]["region"] = "mars"                 # db-1's newest anomaly: a region the model never saw
    batch += [anomaly(t + timedelta(hours=3, minutes=i), "db-3", i) for i in range(3)]
    batch += [anomaly(t + timedelta(hours=4, minutes=i), "db-4", i) for i in range(2)]
    batch += [anomaly(t + timedelta(hours=6, minutes=i), "db-5", i) for i in range(20)]   # enough for two pages
    # untrusted text in the key, a categorical value and an extra (non-feature) field
    batch += [anomaly(t + timedelta(hours=5), SCRIPT, 0, region=IMG, comment=SCRIPT, build=ALERT),
              anomaly(t + timedelta(hours=5, minutes=1), IMG, 1, region=SCRIPT, comment=IMG, build=ALERT,
                      **{SCRIPT: "a field name is record data too"})]
    result = vigil.ingest("web", batch, "http", "http")
    assert result.accepted == len(batch) and not result.rejected
    runtime.scorer.score("web")


def make_runtime(directory: Path, **http: Any) -> Runtime:
    """A runtime like conftest's (its http detector, `http` added to [http]), on a real SQLite file in `directory`."""
    path = write_config_file(directory / "config.toml", heading(http=http), HTTP_DETECTOR)
    return build_runtime(load_config(path), CollectorRegistry(), with_process_metrics=False)


# --- a real uvicorn server in a thread ---------------------------------------------------------------------


class Server:
    """The real app (jobs driven by the tests) on uvicorn in a daemon thread, on a socket bound to a free port."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(
            create_app(runtime, manage_jobs=False), log_config=None, log_level="warning", access_log=False,
            lifespan="on", ws="none", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="review-page-uvicorn")

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start within 15 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    runtime = make_runtime(tmp_path_factory.mktemp("review-page"))
    seed_data(runtime)
    with Server(runtime) as srv:
        yield srv


@dataclass
class Tab:
    """One page in its own browser context, with what it did: requests, dialogs, console errors."""

    page: Page
    requests: list[Any] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def login(self, token: str) -> None:
        self.page.click("#login-open")
        self.page.fill("#token-input", token)
        self.page.click("#login-save")
        self.expect(self.page.locator("#login")).to_be_hidden()

    def filter(self, key: str | None = None, min_ratio: str | None = None, state: str | None = None) -> None:
        if state is not None:
            self.page.select_option("#f-state", state)
        if key is not None:
            self.page.fill("#f-key", key)
        if min_ratio is not None:
            self.page.fill("#f-min-ratio", min_ratio)
        self.page.click("#f-apply")

    def rows(self) -> Any:
        return self.page.locator("#outlier-rows tr")

    def row_ids(self) -> list[int]:
        return [int(i) for i in self.rows().evaluate_all("rows => rows.map(r => r.dataset.id)")]

    def open(self, index: int) -> int:
        """Click a row (not its checkbox) and wait for its detail; returns the outlier id."""
        row = self.rows().nth(index)
        outlier_id = int(row.get_attribute("data-id") or "0")
        row.locator("td.time").click()
        self.expect(self.page.locator("#d-title")).to_have_text(f"Outlier #{outlier_id}")
        return outlier_id

    def selected_id(self) -> int:
        return int(self.page.locator("#outlier-rows tr.selected").get_attribute("data-id") or "0")

    @property
    def expect(self) -> Any:
        expect = importlib.import_module("playwright.sync_api").expect
        expect.set_options(timeout=15_000)      # a loaded 2-core CI machine can be slow to render
        return expect


@pytest.fixture
def tab(browser: Browser, server: Server) -> Iterator[Callable[..., Tab]]:
    contexts = []

    def open_tab(srv: Server = server, path: str = "/review") -> Tab:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        t = Tab(page)
        page.on("request", lambda r: t.requests.append(r))
        page.on("dialog", lambda d: (t.dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: t.errors.append(f"page error: {e}"))
        page.on("console", lambda m: t.errors.append(f"console {m.type}: {m.text}")
                if m.type == "error" and "Failed to load resource" not in m.text else None)
        response = page.goto(srv.url + path)
        assert response is not None and response.status == 200
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        page.wait_for_selector("body[data-state='ready']", state="attached")
        return t

    yield open_tab
    for context in contexts:
        context.close()


def stored(runtime: Runtime, outlier_id: int) -> tuple[str, str | None]:
    detail = runtime.vigil.repo.reviews.detail(outlier_id)
    assert detail is not None
    return detail.outlier.review_state, detail.review_note


def screenshot(page: Page, path: Path, copy: bool = False) -> None:
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    if copy:
        with contextlib.suppress(OSError):
            shutil.copyfile(path, SCREENSHOT_COPY)
            print(f"screenshot: {SCREENSHOT_COPY}")


# --- the page, without a browser --------------------------------------------------------------------------


def test_page_sources_use_no_html_parsing_eval_inline_code_or_external_assets() -> None:
    html = (STATIC / "review.html").read_text(encoding="utf-8")
    js = (STATIC / "review.js").read_text(encoding="utf-8")
    css = (STATIC / "review.css").read_text(encoding="utf-8")
    for pattern in (r"innerHTML", r"outerHTML", r"insertAdjacentHTML", r"document\.write", r"\beval\b",
                    r"new Function", r"setTimeout\(\s*['\"]", r"\.on[a-z]+\s*=[^=]", r"setAttribute\(\s*['\"]on"):
        assert not re.search(pattern, js), f"review.js uses {pattern}"
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script in review.html"
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html), "inline style or handler in review.html"
    external = [u for u in re.findall(r"https?://[^\s\"')]+", html + js + css) if u != "http://www.w3.org/2000/svg"]
    assert external == [], f"external URLs: {external}"
    assert "@import" not in css and "url(" not in css


# --- reviewing with the buttons, the keyboard and in bulk ---------------------------------------------------


def test_filter_open_dismiss_and_confirm_with_buttons(tab: Callable[..., Tab], server: Server,
                                                      tmp_path: Path) -> None:
    t = tab()
    page, expect = t.page, t.expect
    expect(page.locator("#f-state")).to_have_value("unreviewed")
    expect(page.locator("#outlier-rows tr").first).to_be_visible()
    t.login(server.runtime.token)
    expect(page.locator("#token-state")).to_contain_text("set")

    t.filter(key="db-1", min_ratio="5")
    expect(t.rows()).to_have_count(3)                       # db-1's normal records fall under ratio 5
    expect(page.locator("#page-info")).to_have_text(f"1{DASH}3 of 3")
    expect(page.locator("#csv-link")).to_have_attribute(
        "href", "/v1/outliers.csv?review_state=unreviewed&min_ratio=5&key=db-1")
    times = t.rows().locator("td.time").all_text_contents()
    assert times == sorted(times, reverse=True)               # newest first
    ids = t.row_ids()

    first = t.open(0)
    assert first == ids[0]
    detail = page.locator("#detail-body")
    expect(detail).to_be_visible()
    chart = page.locator("#d-features svg.feature-chart")
    assert chart.locator("rect.bar.actual").count() == 3          # load, cpu, latency: bars
    assert chart.locator("rect.bar.expected").count() == 3
    assert chart.locator("rect.bar.share").count() == 5           # every feature's share of the score
    expect(chart).to_contain_text("actual: mars")                 # categoricals: the values, side by side
    assert page.locator("#d-history svg polyline.score-line").count() == 1
    assert page.locator("#d-history svg line.threshold").count() == 1
    assert page.locator("#d-history svg circle.flagged").count() >= 2
    assert page.locator("#d-history svg circle.current").count() == 1
    warnings = page.locator("#d-warnings")
    expect(warnings).to_contain_text("model never saw region=mars")
    expect(warnings).to_contain_text("Model diversity status fail (not ok)")
    expect(page.locator("#d-model")).to_contain_text("quantile")
    expect(page.locator("#d-model")).to_contain_text("400 records")
    expect(page.locator("#d-fields")).to_contain_text("mars")
    expect(t.rows().nth(0).locator(".badge.ood")).to_be_visible()
    screenshot(page, tmp_path / "review-page.png", copy=True)

    page.fill("#d-note", "known deploy on db-1")
    page.click("#d-dismiss")
    expect(t.rows().nth(0).locator("td.review-cell")).to_have_text("dismissed")
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{ids[1]}")   # the next unreviewed one
    assert t.selected_id() == ids[1]
    assert stored(server.runtime, ids[0]) == ("dismissed", "known deploy on db-1")

    page.fill("#d-note", "real incident")
    page.click("#d-confirm")
    expect(t.rows().nth(1).locator("td.review-cell")).to_have_text("confirmed")
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{ids[2]}")
    assert stored(server.runtime, ids[1]) == ("confirmed", "real incident")
    assert stored(server.runtime, ids[2]) == ("unreviewed", None)
    screenshot(page, tmp_path / "review-page-after.png")
    assert t.errors == []


def test_keyboard_review(tab: Callable[..., Tab], server: Server) -> None:
    t = tab()
    page, expect = t.page, t.expect
    t.login(server.runtime.token)
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "f-key"
    page.keyboard.type("db-2")
    page.fill("#f-min-ratio", "5")
    page.keyboard.press("Enter")
    expect(t.rows()).to_have_count(3)
    ids = t.row_ids()
    page.keyboard.press("Escape")

    page.keyboard.press("j")
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{ids[0]}")
    page.keyboard.press("j")
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{ids[1]}")
    page.keyboard.press("k")
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{ids[0]}")
    page.click("#d-note")
    page.keyboard.type("deploy did it, dd")                 # 'd' and 'c' typed in the note are text, not verdicts
    assert stored(server.runtime, ids[0]) == ("unreviewed", None)
    page.keyboard.press("Escape")
    page.keyboard.press("d")
    expect(t.rows().nth(0).locator("td.review-cell")).to_have_text("dismissed")
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{ids[1]}")
    assert stored(server.runtime, ids[0]) == ("dismissed", "deploy did it, dd")

    page.keyboard.press("c")
    expect(t.rows().nth(1).locator("td.review-cell")).to_have_text("confirmed")
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{ids[2]}")
    assert stored(server.runtime, ids[1]) == ("confirmed", None)
    assert t.errors == []


def test_bulk_dismiss_and_confirm(tab: Callable[..., Tab], server: Server) -> None:
    t = tab()
    page, expect = t.page, t.expect
    t.login(server.runtime.token)
    t.filter(key="db-3")
    expect(t.rows()).to_have_count(3)
    ids = t.row_ids()
    t.rows().nth(0).locator("input.row-check").check()
    t.rows().nth(2).locator("input.row-check").check()
    expect(page.locator("#bulk-count")).to_have_text("2 selected")
    page.fill("#bulk-note", "maintenance window")
    page.click("#bulk-dismiss")
    expect(page.locator("#message")).to_contain_text("2 outliers dismissed")
    expect(t.rows().nth(0).locator("td.review-cell")).to_have_text("dismissed")
    expect(t.rows().nth(2).locator("td.review-cell")).to_have_text("dismissed")
    assert stored(server.runtime, ids[0]) == ("dismissed", "maintenance window")
    assert stored(server.runtime, ids[2]) == ("dismissed", "maintenance window")
    assert stored(server.runtime, ids[1]) == ("unreviewed", None)

    t.rows().nth(1).locator("input.row-check").check()
    page.click("#bulk-confirm")
    expect(t.rows().nth(1).locator("td.review-cell")).to_have_text("confirmed")
    assert stored(server.runtime, ids[1]) == ("confirmed", None)
    expect(page.locator("#bulk-count")).to_have_text("0 selected")
    assert t.errors == []


# --- tokens: writes without a valid one change nothing; protected reads ask for one ----------------------------


def test_writes_without_a_valid_token_show_the_error_and_change_nothing(tab: Callable[..., Tab],
                                                                           server: Server) -> None:
    t = tab()
    page, expect = t.page, t.expect
    t.filter(key="db-4")
    expect(t.rows()).to_have_count(2)
    ids = t.row_ids()
    t.open(0)

    page.fill("#d-note", "should wait for the token")
    page.click("#d-dismiss")                                # no token: asked for it, nothing sent
    expect(page.locator("#login-reason")).to_contain_text("needs the API token")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login")).to_contain_text("state/api-token")
    assert not [r for r in t.requests if r.method == "POST"]

    page.fill("#token-input", "not-the-token")            # a token: the waiting verdict is named, not sent
    page.click("#login-save")
    expect(page.locator("#message")).to_contain_text(f"Nothing was stored for outlier #{ids[0]}")
    assert not [r for r in t.requests if r.method == "POST"]
    page.click("#d-dismiss")                                # sent again: a wrong token, the daemon answers 401
    expect(page.locator("#login-reason")).to_contain_text("refused the token (401")
    expect(page.locator("#login")).to_be_visible()
    posts = [r for r in t.requests if r.method == "POST"]
    assert [p.headers.get("authorization") for p in posts] == ["Bearer not-the-token"]
    assert stored(server.runtime, ids[0]) == ("unreviewed", None)
    assert stored(server.runtime, ids[1]) == ("unreviewed", None)
    expect(page.locator("#token-state")).to_have_text("Token: not set")

    page.keyboard.press("Escape")
    t.rows().nth(1).locator("input.row-check").check()
    page.click("#bulk-confirm")                             # bulk, no token: asked again, nothing sent
    expect(page.locator("#login")).to_be_visible()
    assert len([r for r in t.requests if r.method == "POST"]) == 1

    page.fill("#token-input", server.runtime.token)       # the right token: the waiting write is named, not sent
    page.click("#login-save")
    expect(page.locator("#message")).to_contain_text(f"Nothing was stored for outlier #{ids[1]}")
    assert len([r for r in t.requests if r.method == "POST"]) == 1
    assert stored(server.runtime, ids[1]) == ("unreviewed", None)
    page.click("#bulk-confirm")                             # asked again: now it is meant, and stored
    expect(t.rows().nth(1).locator("td.review-cell")).to_have_text("confirmed")
    assert stored(server.runtime, ids[1]) == ("confirmed", None)
    assert stored(server.runtime, ids[0]) == ("unreviewed", None)
    assert t.errors == []


def test_reads_that_need_the_token_ask_for_it_and_retry(browser: Browser, tab: Callable[..., Tab],
                                                         tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, read_requires_token=True)
    runtime.vigil.ingest("web", normal(5, START, seed=0), "http", "http")
    with Server(runtime) as protected:
        t = tab(protected)
        page, expect = t.page, t.expect
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#login-reason")).to_contain_text("needs the API token (401)")
        page.fill("#token-input", runtime.token)
        page.click("#login-save")
        expect(page.locator("#f-detector option[value='web']")).to_have_count(1)
        expect(page.locator("#page-info")).to_have_text("0 of 0")
        expect(page.locator("#message")).to_be_hidden()
        reads = [r for r in t.requests if r.url.startswith(protected.url + "/v1/")]
        assert reads[0].headers.get("authorization") is None
        assert reads[-1].headers.get("authorization") == f"Bearer {runtime.token}"
        assert t.errors == []
        page.context.close()


# --- untrusted record values ------------------------------------------------------------------------------


def test_record_values_are_shown_as_text_and_never_run(tab: Callable[..., Tab], server: Server) -> None:
    t = tab()
    page, expect = t.page, t.expect
    for key, region, comment in ((SCRIPT, IMG, SCRIPT), (IMG, SCRIPT, IMG)):
        t.filter(key=key, state="")
        expect(t.rows()).to_have_count(1)
        expect(t.rows().nth(0).locator("td.key")).to_have_text(key)
        t.open(0)
        expect(page.locator("#d-summary .key")).to_have_text(key)
        expect(page.locator("#d-fields")).to_contain_text(region)       # the panel has this outlier's fields
        expect(page.locator("#d-features svg")).to_contain_text("actual: " + region[:35])
        cells = page.locator("#d-fields tbody tr").evaluate_all(
            "rows => Object.fromEntries(rows.map(r => [r.cells[0].firstChild.textContent, r.cells[1].textContent]))")
        assert cells["region"] == region and cells["comment"] == comment and cells["build"] == ALERT
        expect(page.locator("#d-warnings")).to_contain_text(f"model never saw region={region}")
        chart = page.locator("#d-features svg").text_content() or ""
        assert "actual: " + region[:35] in chart
    assert cells[SCRIPT] == "a field name is record data too"

    t.login(server.runtime.token)
    page.fill("#d-note", ALERT)                             # a note is shown back as text too
    page.click("#d-dismiss")
    expect(t.rows().nth(0).locator("td.review-cell")).to_have_text("dismissed")
    t.open(0)
    expect(page.locator("#d-review .note")).to_have_text(ALERT)
    assert stored(server.runtime, t.row_ids()[0]) == ("dismissed", ALERT)

    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert t.dialogs == []
    assert page.evaluate("document.querySelectorAll('img, iframe, object, embed').length") == 0
    assert page.evaluate("document.querySelectorAll('script').length") == 1
    assert page.evaluate("document.querySelectorAll('body svg:not(.feature-chart):not(.history-chart)').length") == 0
    assert t.errors == []


# --- nothing leaves for another host --------------------------------------------------------------------------


def test_page_loads_nothing_from_another_host(tab: Callable[..., Tab], server: Server) -> None:
    t = tab()
    page, expect = t.page, t.expect
    t.filter(state="")
    expect(t.rows().first).to_be_visible()
    t.open(0)
    page.click("th[data-sort='ratio']")
    expect(page.locator("th[data-sort='ratio']")).to_have_attribute("aria-sort", "descending")
    ratios = t.rows().locator("td.ratio").all_text_contents()
    values = [float(r.lstrip(TIMES)) for r in ratios]
    assert values == sorted(values, reverse=True)
    page.click("th[data-sort='ratio']")
    expect(page.locator("th[data-sort='ratio']")).to_have_attribute("aria-sort", "ascending")
    page.wait_for_load_state("networkidle")
    urls = [r.url for r in t.requests]
    assert any(u.endswith("/review/static/review.js") for u in urls)
    assert any(u.endswith("/review/static/review.css") for u in urls)
    foreign = [u for u in urls if not u.startswith(server.url + "/") and not u.startswith("data:")]
    assert foreign == []
    assert t.errors == []


def test_an_alerts_review_link_opens_with_its_filters(tab: Callable[..., Tab], server: Server) -> None:
    """The `review` annotation of Vigil's alerts links to /review?detector=NAME&review_state=unreviewed."""
    t = tab(path="/review?detector=web&review_state=dismissed&key=db-5")
    page, expect = t.page, t.expect
    expect(page.locator("#f-detector")).to_have_value("web")
    expect(page.locator("#f-state")).to_have_value("dismissed")
    expect(page.locator("#f-key")).to_have_value("db-5")
    expect(page.locator("#csv-link")).to_have_attribute(
        "href", "/v1/outliers.csv?detector=web&review_state=dismissed&key=db-5")
    assert set(t.rows().locator("td.key").all_text_contents()) <= {"db-5"}
    t2 = tab(path="/review?review_state=nonsense")            # a value the page does not know: the default
    t2.expect(t2.page.locator("#f-state")).to_have_value("unreviewed")
    assert t.errors == [] and t2.errors == []


def test_total_and_paging(tab: Callable[..., Tab], server: Server) -> None:
    total = server.runtime.vigil.repo.reviews.query(OutlierFilter(detector="web"), 1, 0)[1]
    assert total > 25
    t = tab()
    page, expect = t.page, t.expect
    page.select_option("#f-state", "")
    expect(page.locator("#page-info")).to_have_text(f"1{DASH}{min(50, total)} of {total}")
    page.select_option("#page-size", "25")
    expect(page.locator("#page-info")).to_have_text(f"1{DASH}25 of {total}")
    first_page = t.row_ids()
    page.click("#page-next")
    expect(page.locator("#page-info")).to_have_text(f"26{DASH}{min(50, total)} of {total}")
    assert not set(first_page) & set(t.row_ids())
    expect(page.locator("#page-prev")).to_be_enabled()
    page.click("#page-prev")
    expect(page.locator("#page-info")).to_have_text(f"1{DASH}25 of {total}")

    page.fill("#f-since", "2025-03-03T12:50:00")            # db-5's anomalies: one a minute from 12:50 UTC
    page.fill("#f-until", "2025-03-03T13:00")
    page.click("#f-apply")
    expect(page.locator("#page-info")).to_have_text(f"1{DASH}10 of 10")
    assert set(t.rows().locator("td.key").all_text_contents()) == {"db-5"}
    expect(page.locator("#csv-link")).to_have_attribute(
        "href", "/v1/outliers.csv?since=2025-03-03T12%3A50%3A00Z&until=2025-03-03T13%3A00%3A00Z")
    csv = page.request.get(server.url + page.locator("#csv-link").get_attribute("href"))
    assert csv.ok and len(csv.text().strip().splitlines()) == 1 + 10
    assert t.errors == []
