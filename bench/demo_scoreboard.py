"""The demo's incidents as a scoreboard: for each injected incident kind, the share of its records flagged.

Run from the repository root: `.venv/bin/python bench/demo_scoreboard.py` (writes
bench/results/demo_scoreboard.md; `--print` only prints). The shipped config.toml's demo detector (its
features, model, threshold and first-window trim) fits a first model on one simulated week of the demo's
four hosts, then scores two weeks:

* **first run**: the same week it trained on, as `make run` scores its backfill (a window that holds its
  incidents: the first-window screen removes the clear ones, the rest are in the model's memory);
* **next week**: the following week, fresh, as the daemon scores live records.

Per kind, the share of its records above the threshold; for records with no incident, the share flagged
(the false-positive rate, against the configured target); and the outliers marked as holding a value the
model never saw although it occurs in the normal records of the training week (should be none).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if __package__ in (None, ""):                 # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

from bench._quality_report import _cpu_model
from detector.config import load_config
from detector.config.sources import DemoSourceConfig
from detector.sources.demo_data import INCIDENT_KINDS, DemoSettings, generate
from detector.trainer import settings_for
from training.fit import fit_model
from training.sequence import KEY_COLUMN, TS_COLUMN

REPO = Path(__file__).resolve().parents[1]
START = datetime(2025, 3, 5, 12, 0, tzinfo=UTC)        # a Wednesday, on the minute (as the demo tests)


@dataclass(frozen=True)
class Board:
    """Flagged share per incident kind ("none": records with no incident) and unseen-but-normal markers."""

    name: str
    flagged: dict[str, float]
    records: dict[str, int]
    unseen_normal: int
    leak_inside: float        # share of memory_leak records whose memory is within their host's normal range


def demo_frame(settings: DemoSettings, start: datetime, end: datetime) -> pd.DataFrame:
    """The demo's records in [start, end) as a frame of features, TS_COLUMN, KEY_COLUMN and `incident`."""
    records = generate(start, end, settings)
    frame = pd.DataFrame([r.fields for r in records])
    frame[TS_COLUMN] = pd.to_datetime([r.ts for r in records], utc=True)
    frame[KEY_COLUMN] = [r.key for r in records]
    frame["incident"] = [r.incident or "none" for r in records]
    return frame


def scoreboard(config: Path = REPO / "config.toml", days: int = 7) -> tuple[list[Board], float]:
    """Fit the config's demo detector on `days` of the demo, score them and the `days` after; seconds to fit."""
    det = load_config(config).detectors["demo"]
    source = det.source
    if not isinstance(source, DemoSourceConfig):
        raise ValueError(f"{config}: detector 'demo' has no demo source")
    settings = DemoSettings(hosts=source.hosts, seed=source.seed, incident_rate=source.incident_rate)
    model, train, threshold = settings_for(det, first=True)     # the first model: an unscreened window
    first = demo_frame(settings, START - timedelta(days=days), START)
    after = demo_frame(settings, START, START + timedelta(days=days))
    started = time.perf_counter()
    fitted = fit_model(first.drop(columns="incident"), det.feature_schema, model, train, threshold,
                       trim_fraction=det.training.first_window_trim)
    seconds = time.perf_counter() - started
    normal = first[first["incident"] == "none"]
    categorical = [f.name for f in det.feature_schema.features if f.kind == "categorical"]
    seen = {name: set(normal[name].astype(str)) for name in categorical}
    boards = []
    for name, frame in (("first run (the training week)", first), ("next week (fresh)", after)):
        result = fitted.score(frame.drop(columns="incident"))
        kinds = frame["incident"].to_numpy()
        flagged = {kind: float(result.is_outlier[kinds == kind].mean()) for kind in ("none", *INCIDENT_KINDS)
                   if (kinds == kind).any()}
        records = {kind: int((kinds == kind).sum()) for kind in flagged}
        unseen = 0
        for j, feature in enumerate(result.feature_names):
            if feature in seen:
                marked = result.unseen[:, j] & result.is_outlier
                unseen += int(frame[feature].astype(str)[marked].isin(seen[feature]).sum())
        leak = frame[frame["incident"] == "memory_leak"]
        bounds = normal.groupby(KEY_COLUMN)["memory_pct"].agg(["min", "max"])
        low = bounds["min"].reindex(leak[KEY_COLUMN]).to_numpy()
        high = bounds["max"].reindex(leak[KEY_COLUMN]).to_numpy()
        memory = leak["memory_pct"].to_numpy()
        inside = float(((memory >= low) & (memory <= high)).mean())
        boards.append(Board(name, flagged, records, unseen, inside))
    return boards, seconds


def markdown(boards: list[Board], target: float) -> str:
    kinds = [k for k in (*INCIDENT_KINDS, "none") if k in boards[0].flagged]
    head = "| scored | " + " | ".join("no incident (FPR)" if k == "none" else k for k in kinds)
    lines = [head + " | unseen-but-normal marks |", "|---" * (len(kinds) + 2) + "|"]
    for board in boards:
        cells = [f"{board.flagged[k]:.1%}" for k in kinds]
        lines.append(f"| {board.name} | " + " | ".join(cells) + f" | {board.unseen_normal} |")
    lines.append("| records (next week) | " + " | ".join(str(boards[-1].records[k]) for k in kinds) + " | |")
    lines.append("")
    lines.append(f"Target false-positive rate {target:.1%}; an incident record counts as caught when it is above "
                 "the threshold. memory_leak records whose memory lies within their host's normal range (the "
                 "training week's records without incident): "
                 + ", ".join(f"{b.leak_inside:.1%} ({b.name})" for b in boards) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    boards, seconds = scoreboard()
    target = load_config(REPO / "config.toml").detectors["demo"].threshold.target_fpr
    table = markdown(boards, target)
    print(table)
    if args.print:
        return 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip()
    out = REPO / "bench" / "results" / "demo_scoreboard.md"
    out.write_text(
        "# Demo incidents as a scoreboard\n\n"
        f"Command: `.venv/bin/python bench/demo_scoreboard.py`; commit {commit}; {platform.machine()}, "
        f"{_cpu_model()}, {os.cpu_count()} CPUs, {platform.python_version()}; first model fitted in "
        f"{seconds:.0f} s.\n\n"
        "The shipped config.toml's demo detector fits its first model on one simulated week of 4 hosts (its "
        "first-window trim and wide scale included), then scores that week (what `make run` shows first) and "
        "the next.\n\n"
        + table + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
