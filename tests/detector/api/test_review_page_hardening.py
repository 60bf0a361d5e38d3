"""The review page as a new user meets it (issue 28, findings 10-12), in a real browser against the real app.

The detail pane follows the list, a verdict refused for want of a token is never sent again by itself, the 401
message shows once, the login form's labels sit by their inputs at 1440 px, a record with hundreds of fields
shows the first of them and how many more, and a verdict can be taken back. The server, data and helpers are
those of test_review_page.py (a trained model and scored outliers on a real SQLite file, uvicorn in a thread).
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.detector.api.test_review_page import (
    N_NORMAL,
    START,
    Server,
    Tab,
    anomaly,
    make_runtime,
    seed_data,
    stored,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

WIDE_FIELDS = 900          # extra fields of one record: under the validator's cap, far over the page's 100 rows
FIELD_ROWS = 100           # what review.js shows at first (FIELD_ROWS there)


def screenshot(page: Page, path: Path) -> None:
    """A screenshot in the test's folder, and a copy in /tmp to look at after the run."""
    page.screenshot(path=str(path))
    with contextlib.suppress(OSError):
        shutil.copyfile(path, Path("/tmp") / f"vigil-{path.name}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    runtime = make_runtime(tmp_path_factory.mktemp("review-page-hardening"))
    seed_data(runtime)
    t = START + timedelta(minutes=N_NORMAL + 10, hours=8)
    wide = anomaly(t, "wide", 0, **{f"extra_{i:04d}": i for i in range(WIDE_FIELDS)})
    result = runtime.vigil.ingest("web", [wide], "http", "http")
    assert result.accepted == 1 and not result.rejected, result.rejected
    with Server(runtime) as srv:
        yield srv


@pytest.fixture
def tab(browser: Browser, server: Server) -> Iterator[Callable[..., Tab]]:
    contexts = []

    def open_tab(width: int = 1280, height: int = 800) -> Tab:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        t = Tab(page)
        page.on("request", lambda r: t.requests.append(r))
        page.on("pageerror", lambda e: t.errors.append(f"page error: {e}"))
        page.on("console", lambda m: t.errors.append(f"console {m.type}: {m.text}")
                if m.type == "error" and "Failed to load resource" not in m.text else None)
        response = page.goto(server.url + "/review")
        assert response is not None and response.status == 200
        page.wait_for_selector("body[data-state='ready']", state="attached")
        return t

    yield open_tab
    for context in contexts:
        context.close()


def posts(t: Tab) -> list[Any]:
    return [r for r in t.requests if r.method == "POST"]


def gap(page: Page, label: str, field: str) -> float:
    """The distance in CSS pixels between a label's text (not its box, which a grid may stretch) and a field's
    box (0 when they touch or overlap)."""
    box_a = page.evaluate("""(selector) => {
        const range = document.createRange();
        range.selectNodeContents(document.querySelector(selector));
        const r = range.getBoundingClientRect();
        return {x: r.x, y: r.y, width: r.width, height: r.height};
    }""", label)
    box_b = page.locator(field).bounding_box()
    assert box_a["width"] > 0 and box_b is not None, (label, field)
    dx = max(0.0, box_a["x"] - (box_b["x"] + box_b["width"]), box_b["x"] - (box_a["x"] + box_a["width"]))
    dy = max(0.0, box_a["y"] - (box_b["y"] + box_b["height"]), box_b["y"] - (box_a["y"] + box_a["height"]))
    return math.hypot(dx, dy)


# --- finding 12: the detail pane, a refused verdict, the 401 message, the login form ---------------------------


def test_the_detail_pane_empties_when_its_outlier_leaves_the_list(tab: Callable[..., Tab]) -> None:
    t = tab()
    page, expect = t.page, t.expect
    t.filter(key="db-1", state="")
    expect(t.rows()).to_have_count(3)                          # the list of this filter, not the one before
    shown = t.open(0)
    expect(page.locator("#detail-body")).to_be_visible()

    t.filter(key="db-2")                                       # shown is not among db-2's outliers
    expect(t.rows()).to_have_count(3)
    expect(t.rows().locator("td.key").first).to_have_text("db-2")
    assert shown not in t.row_ids()
    expect(page.locator("#detail-body")).to_be_hidden()
    expect(page.locator("#detail-empty")).to_be_visible()
    assert page.locator("#outlier-rows tr.selected").count() == 0
    page.keyboard.press("j")                                   # the keys start again from the new list
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{t.row_ids()[0]}")
    assert t.errors == []


def test_a_refused_verdict_is_named_after_login_not_sent_again(tab: Callable[..., Tab], server: Server) -> None:
    t = tab()
    page, expect = t.page, t.expect
    t.login("not-the-token")
    t.filter(key="db-3")
    expect(t.rows()).to_have_count(3)
    ids = t.row_ids()
    t.open(0)

    page.keyboard.press("c")                                   # sent with a wrong token: 401
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login-reason")).to_contain_text("refused the token (401")
    expect(page.locator("#login-reason")).to_contain_text(f"Nothing was stored for outlier #{ids[0]}")
    assert len(posts(t)) == 1

    page.fill("#token-input", server.runtime.token)
    page.click("#login-save")
    expect(page.locator("#message")).to_contain_text(f"Nothing was stored for outlier #{ids[0]}")
    expect(page.locator("#message")).to_contain_text("press Confirm again")
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{ids[0]}")     # still on the outlier it was for
    assert t.selected_id() == ids[0]
    page.wait_for_load_state("networkidle")
    assert len(posts(t)) == 1, "the refused verdict was sent again by itself"
    assert stored(server.runtime, ids[0]) == ("unreviewed", None)

    page.keyboard.press("c")                                   # meant again: stored, then on to the next
    expect(t.rows().nth(0).locator("td.review-cell")).to_have_text("confirmed")
    assert stored(server.runtime, ids[0]) == ("confirmed", None)
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{ids[1]}")
    assert t.errors == []


def test_the_401_message_shows_once(tab: Callable[..., Tab], tmp_path: Path) -> None:
    t = tab()
    page, expect = t.page, t.expect
    t.login("not-the-token")
    t.filter(key="db-4")
    expect(t.rows()).to_have_count(2)
    t.open(0)
    page.click("#d-dismiss")
    expect(page.locator("#login-reason")).to_contain_text("refused the token (401")
    screenshot(page, tmp_path / "refused-token.png")
    text = page.evaluate("document.body.innerText")            # what is rendered, hidden elements left out
    assert text.count("refused the token") == 1, text
    assert text.count("(401") == 1, text
    assert t.errors == []


def test_login_labels_sit_by_their_inputs_at_1440_px(tab: Callable[..., Tab], tmp_path: Path) -> None:
    t = tab(width=1440, height=900)
    page, expect = t.page, t.expect
    page.click("#login-open")
    expect(page.locator("#login")).to_be_visible()
    screenshot(page, tmp_path / "login-1440.png")
    for field in ("token-input", "reviewer-input"):
        distance = gap(page, f"label[for='{field}']", f"#{field}")
        assert distance <= 12, f"#{field} is {distance:.0f} px from its label"
    assert t.errors == []


# --- finding 10: a record with hundreds of fields -------------------------------------------------------------


def test_a_long_record_shows_its_first_fields_and_how_many_more(tab: Callable[..., Tab], tmp_path: Path) -> None:
    t = tab()
    page, expect = t.page, t.expect
    t.filter(key="wide", state="")
    expect(t.rows()).to_have_count(1)
    t.open(0)
    body = page.locator("#d-fields tbody")
    total = WIDE_FIELDS + 5                                    # and the five features
    expect(body.locator("tr")).to_have_count(FIELD_ROWS + 1)
    more = body.locator("tr.more")
    expect(more).to_contain_text(f"{total - FIELD_ROWS} more fields ({FIELD_ROWS} of {total} shown)")
    expect(body.locator("tr").first.locator("td").first).to_have_text(re.compile(r"^latency"))  # explained first
    more.scroll_into_view_if_needed()
    screenshot(page, tmp_path / "long-record.png")
    more.locator("button").click()
    expect(body.locator("tr")).to_have_count(2 * FIELD_ROWS + 1)
    expect(body.locator("tr.more")).to_contain_text(f"{total - 2 * FIELD_ROWS} more fields")
    assert t.errors == []


# --- finding 11: a verdict can be taken back on the page too ----------------------------------------------------


def test_undo_verdict_makes_an_outlier_unreviewed_again(tab: Callable[..., Tab], server: Server) -> None:
    t = tab()
    page, expect = t.page, t.expect
    t.login(server.runtime.token)
    t.filter(key="db-5", state="")
    expect(t.rows()).to_have_count(20)
    first = t.open(0)
    expect(page.locator("#d-unreview")).to_be_hidden()          # nothing to take back yet
    page.fill("#d-note", "looked real")
    page.click("#d-confirm")
    expect(t.rows().nth(0).locator("td.review-cell")).to_have_text("confirmed")
    assert stored(server.runtime, first) == ("confirmed", "looked real")

    t.open(0)
    expect(page.locator("#d-unreview")).to_be_visible()
    page.click("#d-unreview")
    expect(page.locator("#message")).to_contain_text(f"Outlier #{first} is unreviewed again")
    expect(t.rows().nth(0).locator("td.review-cell")).to_have_text("unreviewed")
    expect(page.locator("#d-title")).to_have_text(f"Outlier #{first}")       # stays on it
    expect(page.locator("#d-review")).to_have_text("Not reviewed yet.")
    detail = server.runtime.vigil.repo.reviews.detail(first)
    assert detail is not None                                  # the note box's text goes with it, as with a verdict
    assert (detail.outlier.review_state, detail.reviewer, detail.reviewed_at, detail.review_note) == (
        "unreviewed", None, None, "looked real")
    assert t.errors == []
