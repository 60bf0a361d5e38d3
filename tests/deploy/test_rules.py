"""deploy/prometheus: promtool accepts the rules and the example config, and the rules' unit tests pass."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.deploy._support import PROMETHEUS_CONFIG, RULES, RULES_TEST, alert_rules, require_binary

REQUIRED_ALERTS = {
    "VigilDown", "VigilOutlierRateHigh", "VigilTrainingFailing", "VigilModelStale", "VigilTrainingDataCheckFailing",
    "VigilScoringStalled", "VigilBacklogGrowing", "VigilManyRejects",
}
SEVERITIES = {"critical", "warning", "info"}
VIGIL_COMMAND = re.compile(r"`vigil (status|check-data|models|outliers|train|config|score|db)\b")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = require_binary("promtool", "to check and unit-test deploy/prometheus/")
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_checks_the_example_config_and_the_rules_it_loads() -> None:
    # run from elsewhere: rule_files are resolved relative to the config file, not the working directory
    result = promtool("check", "config", str(PROMETHEUS_CONFIG), cwd=Path("/"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_for_severity_and_operator_annotations() -> None:
    rules = alert_rules()
    names = [rule.name for rule in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert not REQUIRED_ALERTS - set(names), f"missing alerts: {REQUIRED_ALERTS - set(names)}"
    assert len(rules) == RULES.read_text(encoding="utf-8").count("- alert:")
    for rule in rules:
        assert re.fullmatch(r"\d+[smhd]", rule.fields.get("for", "")), f"{rule.name}: no `for`"
        assert rule.fields.get("labels", {}).get("severity") in SEVERITIES, f"{rule.name}: severity"
        annotations = rule.fields.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{rule.name}: annotation {key} is missing"
        assert "\n" not in annotations["runbook"], f"{rule.name}: the runbook must be one line"
        assert VIGIL_COMMAND.search(annotations["runbook"]), f"{rule.name}: the runbook names no vigil command"
        assert 'job="vigil"' in rule.expr, f"{rule.name}: select the vigil scrape job"


def test_every_alert_is_exercised_by_the_unit_tests() -> None:
    text = RULES_TEST.read_text(encoding="utf-8")
    for rule in alert_rules():
        fired = re.findall(rf"alertname: {rule.name}\n\s+exp_alerts:\n\s+- exp_labels", text)
        quiet = re.findall(rf"alertname: {rule.name}\n\s+exp_alerts: \[\]", text)
        assert fired, f"{rule.name}: no unit test makes it fire"
        assert quiet, f"{rule.name}: no unit test checks that it stays quiet"

