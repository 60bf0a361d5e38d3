"""deploy/grafana/vigil.json: a provisionable dashboard whose panels fit the grid and query through the variables."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest

from tests.deploy._support import DEPLOY, GRAFANA_BUILTINS, dashboard, panel_queries, variables_in

GRID_WIDTH = 24


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dashboard()


def test_dashboard_identity(board: dict[str, Any]) -> None:
    assert board["uid"] == "vigil"
    assert board["title"] == "Vigil"
    assert board["schemaVersion"] == 39
    assert board.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert board["panels"]


def test_panels_fit_the_grid_without_overlapping(board: dict[str, Any]) -> None:
    boxes = []
    for panel in board["panels"]:
        pos = panel["gridPos"]
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1, panel["title"]
        assert x + w <= GRID_WIDTH, f"{panel['title']}: x + w = {x + w} > {GRID_WIDTH}"
        boxes.append((panel["title"], x, y, w, h))
    for (a, ax, ay, aw, ah), (b, bx, by, bw, bh) in itertools.combinations(boxes, 2):
        overlap = ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
        assert not overlap, f"panels {a!r} and {b!r} overlap"


def test_panels_have_titles_unique_ids_datasources_and_queries(board: dict[str, Any]) -> None:
    ids = [panel.get("id") for panel in board["panels"]]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), f"panel ids: {ids}"
    titles = [panel.get("title", "").strip() for panel in board["panels"]]
    assert all(titles), "every panel needs a title"
    assert len(titles) == len(set(titles)), f"duplicate titles: {titles}"
    for panel in board["panels"]:
        assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel.get("targets", [])
        assert any(t.get("expr", "").strip() for t in targets), f"{panel['title']}: no query"
        ref_ids = [t.get("refId") for t in targets]
        assert len(ref_ids) == len(set(ref_ids)) and all(ref_ids), f"{panel['title']}: refIds {ref_ids}"
        for t in targets:
            assert t.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_dashboard_uids_are_unique() -> None:
    uids = [json.loads(path.read_text(encoding="utf-8"))["uid"] for path in (DEPLOY / "grafana").rglob("*.json")]
    assert uids and len(uids) == len(set(uids)), uids


def test_template_variables(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert len(variables) == len(board["templating"]["list"]), "duplicate variable names"
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    detector = variables["detector"]
    assert detector["type"] == "query"
    assert detector["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert detector["multi"] is True and detector["includeAll"] is True
    query = detector["query"]["query"] if isinstance(detector["query"], dict) else detector["query"]
    assert re.fullmatch(r"label_values\(vigil_\w+, detector\)", query), query


def test_every_variable_is_used_and_every_used_variable_is_defined(board: dict[str, Any]) -> None:
    defined = {v["name"] for v in board["templating"]["list"]}
    used: set[str] = set()
    for panel in board["panels"]:
        used |= variables_in(panel["datasource"]["uid"])
        for target in panel["targets"]:
            used |= variables_in(target.get("expr", ""))
    assert defined <= used, f"variables no panel uses: {defined - used}"
    assert used <= defined | GRAFANA_BUILTINS, f"undefined variables: {used - defined - GRAFANA_BUILTINS}"


def test_queries_filter_by_detector_and_use_rate_interval(board: dict[str, Any]) -> None:
    unfiltered = {"vigil_errors_total"}          # the only vigil_* family without a detector label
    for title, expr in panel_queries(board):
        for name in set(re.findall(r"\bvigil_\w+", expr)) - unfiltered:
            selectors = re.findall(rf"\b{name}\{{([^}}]*)\}}", expr)
            bare = re.findall(rf"\b{name}\b(?!\{{)", expr)
            if name == "vigil_records" and "and on (job, instance) vigil_records" in expr:
                continue                         # process_* series restricted to Vigil targets
            assert selectors and not bare, f"{title}: {name} without a selector in {expr}"
            assert all(re.search(r'detector=~"\$(\{detector\}|detector)', s) for s in selectors), \
                f"{title}: {name} not filtered by $detector in {expr}"
        for window in re.findall(r"\b(?:rate|irate)\([^\[]*\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", f"{title}: rate window {window} in {expr}"


def test_score_heatmap_reads_histogram_buckets(board: dict[str, Any]) -> None:
    [heatmap] = [p for p in board["panels"] if p["type"] == "heatmap"]
    [target] = heatmap["targets"]
    assert "vigil_score_threshold_ratio_bucket" in target["expr"] and target["format"] == "heatmap"
    assert "threshold" in heatmap["description"] and "1" in heatmap["description"]
