"""Shared by the deploy/ tests: paths, external tools, the alert rules and dashboard queries, PromQL splitting,
and the records the live stack tests post.

The test environment has no YAML library, so `alert_rules` reads the small YAML subset rules.yml is
written in (block sequences and mappings, plain/quoted scalars, `>-` and `|` block scalars) and fails
loudly on anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "vigil.json"

# Grafana's built-in variables a panel query may use.
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                              "__range_ms", "__from", "__to"})


def require_binary(name: str, purpose: str) -> str:
    """The path of an executable; skip without it, but fail under CI=true (CI must run these tests)."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"`{name}` is not on PATH (Debian: apt-get install prometheus); it is needed {purpose}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


# --- the alert rules --------------------------------------------------------------------------------------

@dataclass
class AlertRule:
    name: str
    group: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def expr(self) -> str:
        return str(self.fields["expr"])


_ITEM = re.compile(r"^(?P<indent> *)- (?P<key>[A-Za-z_]+):(?: +(?P<value>.*))?$")
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]+):(?: +(?P<value>.*))?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _scalar(value: str, lines: list[str], i: int, key_indent: int) -> tuple[str, int]:
    """The scalar starting with `value` on line i-1; returns it and the index of the next line to read."""
    value = value.strip()
    if value in (">-", ">", "|", "|-"):
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > key_indent):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        margin = min(_indent(line) for line in block if line.strip())
        body = [line[margin:] for line in block]
        if value.startswith("|"):
            return "\n".join(body), i
        paragraphs = " ".join(line if line.strip() else "\n" for line in body)
        return re.sub(r" ?\n ?", "\n", paragraphs), i
    if value.startswith('"'):
        end = value.rindex('"')
        return str(json.loads(value[:end + 1])), i
    if value.startswith("'"):
        end = value.rindex("'")
        return value[1:end].replace("''", "'"), i
    if value.startswith(("{", "[", "&", "*", "!")):
        raise ValueError(f"line {i}: {value!r}: YAML beyond the subset this reader knows")
    return re.sub(r" +#.*$", "", value), i


def alert_rules(path: Path = RULES) -> list[AlertRule]:
    """Every `- alert:` entry of a rule file with its expr, for, labels and annotations."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rules: list[AlertRule] = []
    group = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if _is_blank(line):
            continue
        item = _ITEM.match(line)
        if item and item["key"] == "name":
            group, i = _scalar(item["value"] or "", lines, i, _indent(line))
            continue
        if not (item and item["key"] == "alert"):
            continue
        rule_indent = len(item["indent"]) + 2
        name, i = _scalar(item["value"] or "", lines, i, rule_indent)
        rule = AlertRule(name, group)
        while i < len(lines) and (_is_blank(lines[i]) or _indent(lines[i]) >= rule_indent):
            line = lines[i]
            i += 1
            if _is_blank(line):
                continue
            key = _KEY.match(line)
            if key is None or _indent(line) != rule_indent:
                raise ValueError(f"{path.name}:{i}: unexpected line in rule {name}: {line!r}")
            if key["value"]:
                rule.fields[key["key"]], i = _scalar(key["value"], lines, i, rule_indent)
                continue
            nested: dict[str, str] = {}
            while i < len(lines) and (_is_blank(lines[i]) or _indent(lines[i]) > rule_indent):
                sub_line = lines[i]
                i += 1
                if _is_blank(sub_line):
                    continue
                sub = _KEY.match(sub_line)
                if sub is None or not sub["value"]:
                    raise ValueError(f"{path.name}:{i}: unexpected line under {key['key']}: {sub_line!r}")
                nested[sub["key"]], i = _scalar(sub["value"], lines, i, _indent(sub_line))
            rule.fields[key["key"]] = nested
        rules.append(rule)
    return rules


# --- the dashboard ----------------------------------------------------------------------------------------

def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    return [(panel.get("title", "?"), target.get("expr", ""))
            for panel in board["panels"] for target in panel.get("targets", [])]


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def variables_in(text: str) -> set[str]:
    return {m[1] or m[2] for m in _VARIABLE.finditer(text)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $name and ${name} as Grafana does; a variable not in `values` raises KeyError."""
    return _VARIABLE.sub(lambda m: values[m[1] or m[2]], expr)


# --- PromQL: the top-level structure of an alert expression ---------------------------------------------

_SET_OP = re.compile(r"(and|or|unless)\b(\s*(?:on|ignoring)\s*\([^)]*\))?", re.IGNORECASE)
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*bool\b)?(\s*(?:on|ignoring)\s*\([^)]*\))?"
                         r"(\s*(?:group_left|group_right)\s*(?:\([^)]*\))?)?")


def _depths(expr: str) -> list[int]:
    """Bracket depth at each character of `expr` (opening and closing brackets count inside), -1 in strings."""
    depths = []
    depth = 0
    quote = ""
    escaped = False
    for ch in expr:
        if quote:
            depths.append(-1)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'`":
            quote = ch
            depths.append(-1)
            continue
        if ch in "([{":
            depth += 1
        depths.append(depth)
        if ch in ")]}":
            depth -= 1
    depths.append(depth)                # one past the end: the final depth
    return depths


def _top_level_positions(expr: str) -> list[int]:
    """Indices of characters of `expr` outside brackets, braces, parentheses and string literals."""
    return [i for i, depth in enumerate(_depths(expr)[:-1]) if depth == 0 and expr[i] not in "([{)]}"]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def _balanced(text: str) -> bool:
    """Every bracket of `text` (outside strings) closes one opened before it, and all are closed."""
    depth = 0
    for ch in _STRING.sub('""', text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def split_set_operators(expr: str) -> list[tuple[str, str]]:
    """The operands of the top-level and/or/unless of `expr`: [("", first), ("and", second), ...]."""
    top = set(_top_level_positions(expr))
    parts: list[tuple[str, str]] = []
    op, start, i = "", 0, 0
    while i < len(expr):
        before_ok = i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:")
        match = _SET_OP.match(expr, i) if i in top and before_ok else None
        if match:
            parts.append((op, expr[start:i].strip()))
            op, start, i = match[1].lower(), match.end(), match.end()
            continue
        i += 1
    parts.append((op, expr[start:].strip()))
    return parts


def left_of_comparison(operand: str) -> str:
    """What an operand compares: the text left of its first top-level comparison (or all of it).

    `absent(X)` and `absent_over_time(X)` give X: the selector an absence alert watches.
    """
    operand = operand.strip()
    absent = re.fullmatch(r"absent(?:_over_time)?\s*\((.*)\)", operand, re.DOTALL)
    if absent and _balanced(absent[1]):
        return absent[1].strip()
    for i in _top_level_positions(operand):
        if _COMPARISON.match(operand, i):
            return operand[:i].strip()
    return operand


def checked_queries(expr: str) -> list[str]:
    """The queries of an alert expression that must return data on a working daemon: the left-hand side
    of every top-level operand except those after `unless` (which may legitimately be empty)."""
    return [left_of_comparison(operand) for op, operand in split_set_operators(expr) if op != "unless"]


def normal_records(n: int, seed: int, end: datetime, constant_cpu: bool = False) -> list[dict[str, Any]]:
    """cpu and latency follow load, one record a minute up to `end`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        load = float(rng.uniform(0.2, 1.0))
        out.append({
            "ts": (end - timedelta(minutes=n - i)).isoformat(), "host": f"web-{i % 4}", "load": round(load, 4),
            "cpu": 50.0 if constant_cpu else round(10 + 70 * load + float(rng.normal(0, 2)), 3),
            "latency": round(40 + 120 * load + float(rng.normal(0, 4)), 3),
            "region": ("eu-west", "us-east", "ap-south")[i % 3],
        })
    return out


def anomalous_records(n: int) -> list[dict[str, Any]]:
    """Pegged CPU and ten times the latency at low load, from a region never seen: outliers, out of range,
    unseen category."""
    now = datetime.now(UTC)
    return [{"ts": now.isoformat(), "host": f"web-{i}", "load": 0.3, "cpu": 400.0, "latency": 1500.0 + i,
             "region": "mars"} for i in range(n)]


def live_prometheus_config(vigil_port: int, alertmanager_port: int | None = None) -> str:
    """prometheus.yml for a live test: every second, Vigil's rules (rules.yml beside it), one daemon on
    loopback, and alerts sent to an Alertmanager when its port is given."""
    alerting = "" if alertmanager_port is None else (
        "alerting:\n  alertmanagers:\n    - static_configs:\n"
        f'        - targets: ["127.0.0.1:{alertmanager_port}"]\n')
    return ("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "rule_files:\n  - rules.yml\n" + alerting +
            "scrape_configs:\n  - job_name: vigil\n    static_configs:\n"
            f'      - targets: ["127.0.0.1:{vigil_port}"]\n')
