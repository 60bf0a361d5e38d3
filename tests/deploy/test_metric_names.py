"""The metric names in deploy/ (alert rules, dashboard) are the ones detector/metrics.py declares, and back."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from detector.metrics import Metrics, StoreCollector, StoreSnapshot
from tests.deploy._support import DEPLOY, alert_rules, dashboard, panel_queries

# Declared vigil_* families that neither a dashboard panel nor an alert rule uses, each with the reason.
# Keep it short: a family in this list is one an operator cannot see without writing a query.
NOT_USED: dict[str, str] = {}

# Sample names of each metric type in the exposition format, by family name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
VIGIL_NAME = re.compile(r"(?<![\w.:/-])vigil_[a-z0-9_]+")


def declared() -> dict[str, str]:
    """Every sample name the daemon can export -> its family name."""
    registry = CollectorRegistry()
    Metrics(registry)
    now = time.time()
    snapshot = StoreSnapshot(
        records={("web", "pending"): 3, ("web", "scored"): 40}, oldest_pending={"web": now - 5},
        model_trained={"web": now - 60}, unreviewed={"web": 2})
    registry.register(StoreCollector(lambda: snapshot, lambda: ["web"]))
    names: dict[str, str] = {}
    for family in registry.collect():
        if not family.name.startswith("vigil_"):
            continue
        for suffix in _SUFFIXES[family.type]:
            names[family.name + suffix] = family.name
        for sample in family.samples:      # the store gauges, which carry samples without any label use
            names[sample.name] = family.name
    return names


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    names = declared()
    families = set(names.values())
    # the contract as the README lists it; a family missing here means metrics.py changed under us
    assert {"vigil_records_ingested", "vigil_score_threshold_ratio", "vigil_records", "vigil_scoring_lag_seconds",
            "vigil_model_age_seconds", "vigil_outliers_unreviewed", "vigil_training_data_check_failing"} <= families
    return names


def query_names() -> dict[str, set[str]]:
    """vigil_* names in the queries (alert expressions, panel targets, variable queries) -> where."""
    where: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in VIGIL_NAME.findall(rule.expr):
            where.setdefault(name, set()).add(f"alert {rule.name}")
    board = dashboard()
    for title, expr in panel_queries(board):
        for name in VIGIL_NAME.findall(expr):
            where.setdefault(name, set()).add(f"panel {title!r}")
    for variable in board["templating"]["list"]:
        query = variable.get("query", "")
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        for name in VIGIL_NAME.findall(text + " " + variable.get("definition", "")):
            where.setdefault(name, set()).add(f"variable {variable['name']}")
    return where


def test_every_name_used_in_queries_is_exported(exported: dict[str, str]) -> None:
    unknown = {name: sorted(places) for name, places in query_names().items() if name not in exported}
    assert not unknown, f"metric names the daemon does not export: {unknown}"


@pytest.mark.parametrize("path", sorted(p for p in DEPLOY.rglob("*") if p.is_file()), ids=lambda p: p.name)
def test_every_name_mentioned_anywhere_in_deploy_is_exported(exported: dict[str, str], path: Path) -> None:
    """Descriptions, summaries and runbooks name metrics too (by sample or family name); a typo misleads."""
    text = path.read_text(encoding="utf-8")
    unknown = sorted(set(VIGIL_NAME.findall(text)) - set(exported) - set(exported.values()))
    assert not unknown, f"{path.relative_to(DEPLOY)} names metrics the daemon does not export: {unknown}"


def test_every_exported_family_is_on_the_dashboard_or_in_an_alert(exported: dict[str, str]) -> None:
    used = {exported[name] for name in query_names() if name in exported}
    families = set(exported.values())
    assert set(NOT_USED) <= families, f"NOT_USED lists families that no longer exist: {set(NOT_USED) - families}"
    missing = sorted(families - used - set(NOT_USED))
    assert not missing, f"exported families no panel or alert uses (add them, or to NOT_USED with a reason): {missing}"
    stale = sorted(set(NOT_USED) & used)
    assert not stale, f"NOT_USED lists families that are used after all: {stale}"

