"""The `web` detector of the daemon process tests (tests/detector/test_e2e.py, test_lifecycle.py, test_crash.py,
test_scale_out.py): the end-to-end config, records, a daemon process on it, and a read-only look at the
daemon's SQLite file."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.config import HEALTHY, WEB_FEATURES, config_text, daemon_heading, detector, write_config_file
from tests.support.daemon import Daemon
from tests.support.net import free_port

__all__ = ["REGIONS", "SEQ_START", "WebDaemon", "injected_records", "normal_records", "query", "seq_record",
           "web_config"]

REGIONS = ("eu-west", "us-east", "ap-south")
SEQ_START = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)      # of `seq_record`


def web_config(port: int, epochs: int = 30, patience: int = 5, on_ingest: bool = True) -> str:
    """A daemon on 127.0.0.1:`port` (SQLite in ./state) with one `web` detector that trains its first model
    once 300 records are in and scores every second (and on ingest, unless `on_ingest` is false)."""
    return config_text(daemon_heading(port), detector(
        "web", {**WEB_FEATURES, **HEALTHY},
        model={"hidden": [16], "latent": 2, "epochs": epochs, "batch_size": 64, "patience": patience, "seed": 0,
               "device": "cpu"},
        threshold={"target_fpr": 0.01},
        training={"window": "30d", "min_records": 300, "max_records": 5000},
        scoring={"interval": "1s", "batch_size": 500, "on_ingest": on_ingest}))


class WebDaemon(Daemon):
    """`vigil run` (exec'd) on `web_config` in `directory`; its SQLite file is `db`."""

    stop_timeout = 15

    def __init__(self, directory: Path, epochs: int = 30, patience: int = 5, on_ingest: bool = True) -> None:
        port = free_port()
        config = write_config_file(directory / "config.toml", web_config(port, epochs, patience, on_ingest))
        super().__init__(config, port, directory / "state")
        self.dir = directory
        self.db = directory / "state" / "vigil.db"


def normal_records(n: int, seed: int, start: datetime) -> list[dict[str, Any]]:
    """cpu and latency follow load; `kind` is an extra field the model does not see."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        load = float(rng.uniform(0.2, 1.0))
        out.append({
            "ts": (start + timedelta(minutes=i)).isoformat(), "host": f"web-{i % 4}", "load": round(load, 4),
            "cpu": round(10 + 70 * load + float(rng.normal(0, 2)), 3),
            "latency": round(40 + 120 * load + float(rng.normal(0, 4)), 3),
            "region": REGIONS[i % 3], "healthy": True, "kind": "normal",
        })
    return out


def injected_records(n: int, start: datetime) -> list[dict[str, Any]]:
    """CPU pegged and latency ten times the normal at low load."""
    return [
        {"ts": (start + timedelta(minutes=i)).isoformat(), "host": f"web-{i % 4}", "load": 0.3, "cpu": 99.0,
         "latency": 1500.0 + 10 * i, "region": REGIONS[i % 3], "healthy": False, "kind": "injected"}
        for i in range(n)
    ]


def seq_record(seq: int) -> dict[str, Any]:
    """A normal record (cpu and latency follow load) carrying its unique `seq` as an extra field."""
    rng = random.Random(seq)
    load = rng.uniform(0.2, 1.0)
    return {"ts": (SEQ_START + timedelta(seconds=10 * seq)).isoformat(), "host": f"web-{seq % 4}",
            "load": round(load, 4), "cpu": round(10 + 70 * load + rng.gauss(0, 2), 3),
            "latency": round(40 + 120 * load + rng.gauss(0, 4), 3), "region": REGIONS[seq % 3], "seq": seq}


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the daemon's SQLite file directly (read-only), not through our code."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
