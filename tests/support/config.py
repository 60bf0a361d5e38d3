"""Config files for tests and benches: the [daemon], [store] and [http] heading, and detector sections.

Values are written as TOML from Python values (str, Path, bool, int, float, list, dict as an inline table),
so a test states what differs and reads no TOML boilerplate.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["HEALTHY", "WEB_FEATURES", "config_text", "daemon_heading", "detector", "heading", "table",
           "toml_value", "write_config_file"]

# the features of the `web` detectors of the daemon tests: cpu and latency follow load
WEB_FEATURES: dict[str, Any] = {"load": "numeric", "cpu": "numeric", "latency": "numeric", "region": "categorical"}
HEALTHY: dict[str, Any] = {"healthy": {"kind": "boolean", "optional": True}}


def toml_key(key: str) -> str:
    """`key` as a TOML key: bare where it can be, quoted otherwise (a metric name such as `system.cpu`)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: Any) -> str:
    """`value` as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"no TOML for {value!r}")


def table(name: str | None, values: Mapping[str, Any]) -> str:
    """`[name]` and one `key = value` line per entry (no header where name is None)."""
    lines = [f"[{name}]"] if name is not None else []
    lines += [f"{toml_key(key)} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def heading(*, state_dir: str | Path = "state", port: int | None = 0, host: str | None = None,
            store_url: str | None = None, log_level: str | None = None, daemon: Mapping[str, Any] | None = None,
            http: Mapping[str, Any] | None = None) -> str:
    """The tables every config starts with:

    * [daemon]: state_dir, torch_threads = 1, log_level where given, then `daemon`'s keys;
    * [store]: url, only where `store_url` is given (otherwise the default SQLite file in the state folder);
    * [http]: host where given, port, then `http`'s keys; no [http] table at all where `port` is None.
    """
    daemon_values: dict[str, Any] = {"state_dir": state_dir, "torch_threads": 1}
    if log_level is not None:
        daemon_values["log_level"] = log_level
    parts = [table("daemon", {**daemon_values, **(daemon or {})})]
    if store_url is not None:
        parts.append(table("store", {"url": store_url}))
    if port is not None:
        http_values: dict[str, Any] = {"host": host} if host is not None else {}
        parts.append(table("http", {**http_values, "port": port, **(http or {})}))
    return "\n".join(parts)


def daemon_heading(port: int, store_url: str | None = None, state_dir: str = "state") -> str:
    """The heading of a config for a real `vigil run` process: HTTP on 127.0.0.1:`port`, info logs."""
    return heading(state_dir=state_dir, port=port, host="127.0.0.1", store_url=store_url, log_level="info")


def detector(name: str, features: Mapping[str, Any], *, source: Mapping[str, Any] | None = None,
             key_field: str | None = "host", **tables: Mapping[str, Any]) -> str:
    """One detector: [detectors.NAME] (its source, `http` unless given, and key_field),
    [detectors.NAME.features], then a [detectors.NAME.TABLE] per keyword (model=, threshold=, training=,
    scoring=, ...), in the order given."""
    head: dict[str, Any] = {"source": source or {"type": "http"}}
    if key_field is not None:
        head["key_field"] = key_field
    parts = [table(f"detectors.{name}", head), table(f"detectors.{name}.features", features)]
    parts += [table(f"detectors.{name}.{section}", values) for section, values in tables.items()]
    return "\n".join(parts)


def config_text(*parts: str) -> str:
    """A config of parts (a heading, detector sections; each dedented) one after another."""
    return "\n".join(textwrap.dedent(part) for part in parts)


def write_config_file(path: Path, *parts: str) -> Path:
    """Write `config_text(*parts)` to `path`; returns the path."""
    path.write_text(config_text(*parts), encoding="utf-8")
    return path
