"""deploy/grafana/vigil.json read by Grafana's own dashboard model (grafana-foundation-sdk, the types Grafana
publishes from its schema): every panel's options parse as its plugin's model, every query as a Prometheus
query, the variables as Grafana's variable model, and the JSON survives the model's round trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard, VariableType

from tests.deploy._support import dashboard

# keys the SDK's schema (Grafana 10.1) does not model: newer panel options, the built-in annotation's
# marker, the provisioned dashboard's null id and the variable editor's text; Grafana fills them in itself
UNMODELLED = {
    ".id", ".annotations.list[].builtIn", ".templating.list[].definition", ".panels[].options.maxVizHeight",
    ".panels[].options.namePlacement", ".panels[].options.sizing", ".panels[].options.tooltip.showColorScale",
}


def _paths(node: Any, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(node, dict):
        for key, value in node.items():
            out |= {f"{prefix}.{key}"} | _paths(value, f"{prefix}.{key}")
    elif isinstance(node, list):
        for value in node:
            out |= _paths(value, f"{prefix}[]")
    return out


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return dashboard()


@pytest.fixture(scope="module")
def model(raw: dict[str, Any]) -> Dashboard:
    register_default_plugins()
    return Dashboard.from_json(raw)


def test_every_panel_is_a_known_plugin_with_typed_options(model: Dashboard, raw: dict[str, Any]) -> None:
    panels = model.panels or []
    assert len(panels) == len(raw["panels"]) > 0
    for panel, source in zip(panels, raw["panels"], strict=True):
        assert panel.type_val == source["type"]
        # a known plugin's options parse into that plugin's model; an unknown type would stay a plain dict
        assert not isinstance(panel.options, dict), f"{panel.title}: panel type {panel.type_val!r} unknown"
        assert type(panel.options).__module__.endswith("." + panel.type_val), panel.title
        assert panel.grid_pos is not None and panel.grid_pos.w > 0 and panel.grid_pos.h > 0


def test_every_query_is_a_prometheus_query_on_the_datasource_variable(model: Dashboard) -> None:
    for panel in model.panels or []:
        assert panel.targets, panel.title
        for target in panel.targets:
            assert isinstance(target, prometheus.Dataquery), f"{panel.title}: {type(target).__name__}"
            assert target.expr and target.ref_id, panel.title
            source = target.datasource if isinstance(target.datasource, dict) else vars(target.datasource or {})
            assert source.get("uid") == "${datasource}", panel.title


def test_the_variables_are_a_prometheus_datasource_and_a_detector_query(model: Dashboard) -> None:
    assert model.templating is not None
    variables = {v.name: v for v in model.templating.list_val or []}
    assert variables["datasource"].type_val == VariableType.DATASOURCE
    detector = variables["detector"]
    assert detector.type_val == VariableType.QUERY
    query = detector.query if isinstance(detector.query, str) else (detector.query or {}).get("query")
    assert query == "label_values(vigil_records, detector)"      # a store series every detector has


def test_the_json_survives_the_models_round_trip(model: Dashboard, raw: dict[str, Any]) -> None:
    written = json.loads(json.dumps(model, cls=JSONEncoder))
    assert _paths(raw) - _paths(written) <= UNMODELLED
    again = json.loads(json.dumps(Dashboard.from_json(written), cls=JSONEncoder))
    assert again == written
    assert written["uid"] == raw["uid"] and written["schemaVersion"] == raw["schemaVersion"]
