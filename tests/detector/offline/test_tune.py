"""`vigil tune`: ranking metrics, the grid, and the command on the demo detector (held-out, then reviewed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detector.config import Config, ModelConfig, load_config
from detector.daemon import build_runtime
from detector.offline.tune import (
    Candidate,
    Grid,
    average_precision,
    hidden_for,
    model_snippet,
    roc_auc,
    variant_choices,
)
from detector.sources.demo import DemoSource
from tests.support.demo import NOW, FakeClock, demo_source_config, write_demo_config

GRID = ("--depths", "1,2", "--latents", "2,4", "--epochs", "4", "--max-rows", "1200")


def arr(*values: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array(values, dtype=np.float64)


def test_roc_auc_and_average_precision() -> None:
    assert roc_auc(arr(5, 6), arr(1, 2, 3)) == 1.0
    assert average_precision(arr(5, 6), arr(1, 2, 3)) == 1.0
    assert roc_auc(arr(0, 0.5), arr(1, 2, 3)) == 0.0
    assert roc_auc(arr(2.0), arr(2.0)) == 0.5, "a tie counts half"
    # ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): precision 1/1 at the first hit, 2/3 at the second
    assert average_precision(arr(0.9, 0.7), arr(0.8, 0.1)) == pytest.approx((1 + 2 / 3) / 2)
    assert roc_auc(arr(0.9, 0.7), arr(0.8, 0.1)) == 0.75
    assert average_precision(arr(1.0), arr(1.0, 1.0)) == pytest.approx(1 / 3), "ties rank positives last"


def test_variant_choices_follow_the_config() -> None:
    field = ModelConfig.model_fields.get("variant")
    choices = variant_choices()
    if field is None:
        assert choices == ()
        return
    assert choices and set(choices) <= set(get_args(field.annotation)) | {
        a for arg in get_args(field.annotation) for a in get_args(arg)}
    for variant in choices:
        ModelConfig.model_validate({"variant": variant})


def test_hidden_widths_halve_but_stay_wider_than_the_code() -> None:
    assert hidden_for(1, 32, 4) == (32,)
    assert hidden_for(3, 32, 4) == (32, 16, 8)
    assert hidden_for(4, 32, 8) == (32, 16, 8, 8)


def demo_config(directory: Path) -> Path:
    return write_demo_config(directory, epochs=8, patience=8)


def test_grid(tmp_path: Path) -> None:
    config = load_config(demo_config(tmp_path))
    grid = Grid.parse(config, "demo", "1,2,3", "2,3,8", None)
    configured = Candidate((32, 16), 3, getattr(config.detectors["demo"].model, "variant", None))
    assert grid.candidates[0] == configured, "the configured shape comes first"
    assert len(grid.candidates) == len(set(grid.candidates)) == 9 + len(variant_choices()) - (
        1 if variant_choices() else 0)
    assert {(c.hidden, c.latent) for c in grid.candidates} >= {((32,), 2), ((32, 16, 8), 8)}
    for bad in (("0", "2"), ("1", "x"), ("1,2,3,4,5,6,7", "1,2,3,4,5,6,7")):
        with pytest.raises(ValueError, match=r"--depths|--latents|at most"):
            Grid.parse(config, "demo", *bad, None)
    with pytest.raises(ValueError, match="--variants: nonsense"):
        Grid.parse(config, "demo", "1", "2", "nonsense")


def merge_model_table(config_text: str, snippet: str, detector: str) -> str:
    """The config with the detector's [model] table replaced by the snippet (its comment line kept)."""
    pattern = re.compile(rf"^\[detectors\.{detector}\.model\]\n(?:(?!\[).*\n)*", re.MULTILINE)
    assert pattern.search(config_text)
    return pattern.sub(lambda _: snippet.split("\n", 1)[1], config_text)


def test_snippet_merges_into_a_valid_config(tmp_path: Path) -> None:
    path = demo_config(tmp_path)
    config = load_config(path)
    winner = Candidate((64, 8), 5, variant_choices()[-1] if variant_choices() else None)
    snippet = model_snippet(config, "demo", winner)
    table = tomllib.loads(snippet)["detectors"]["demo"]["model"]
    assert (table["hidden"], table["latent"]) == ([64, 8], 5)
    assert table["epochs"] == 8, "the configured keys stay"
    original = tomllib.loads(path.read_text(encoding="utf-8"))
    original["detectors"]["demo"]["model"].update(table)             # merged key by key
    merged = Config.model_validate(original).detectors["demo"].model
    assert (merged.hidden, merged.latent) == ((64, 8), 5)
    (tmp_path / "merged.toml").write_text(merge_model_table(path.read_text(encoding="utf-8"), snippet, "demo"),
                                          encoding="utf-8")
    assert load_config(tmp_path / "merged.toml").detectors["demo"].model.hidden == (64, 8)


def vigil(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_CONFIG"}
    return subprocess.run([sys.executable, "-m", "detector.cli.main", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def ranked_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rank "))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_tune_demo_ranks_writes_a_snippet_config_check_accepts(tmp_path: Path) -> None:
    path = demo_config(tmp_path)
    runtime = build_runtime(load_config(path), CollectorRegistry(), with_process_metrics=False)
    n = DemoSource(demo_source_config(runtime), runtime.vigil.sink("demo", "demo"), clock=FakeClock(NOW)).poll()
    assert n == 1440

    held_out = vigil(tmp_path, "tune", "demo", *GRID, "--write", "snippet.toml")
    assert held_out.returncode == 0, held_out.stderr
    n = 5 + max(len(variant_choices()) - 1, 0)      # the configured shape, 2 x 2 others, the other variants
    assert held_out.stdout.startswith(f"demo: {n} candidates fitted on 960 records, ranked by mean reconstruction "
                                      "error of 240 held-out records")
    rows = ranked_rows(held_out.stdout)
    assert [r[0].rstrip("*") for r in rows] == [str(i) for i in range(1, n + 1)]
    assert next(r for r in rows if r[0].endswith("*"))[1:3] == ["32-16", "3"], "the configured shape is marked"
    assert held_out.stdout.splitlines()[2].split()[-1] == "seconds", "no error column: every candidate fitted"
    errors = [float(r[-5]) for r in rows]
    assert errors == sorted(errors)
    assert held_out.stderr.count("[") == n, "one progress line per candidate"
    snippet = (tmp_path / "snippet.toml").read_text(encoding="utf-8")
    assert snippet in held_out.stdout
    winner = tomllib.loads(snippet)["detectors"]["demo"]["model"]
    assert (winner["hidden"], winner["latent"]) == ([int(w) for w in rows[0][1].split("-")], int(rows[0][2]))

    merged = tmp_path / "merged.toml"
    merged.write_text(merge_model_table(path.read_text(encoding="utf-8"), snippet, "demo"), encoding="utf-8")
    check = vigil(tmp_path, "config", "check", "--config", "merged.toml")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("merged.toml: ok; detectors: demo (demo)")

    # with reviewed outliers the ranking is by how well confirmed anomalies stand out
    assert runtime.trainer.train("demo", "first").result == "success"
    runtime.scorer.score("demo")
    outliers = runtime.vigil.repo.list_outliers("demo", None, 1000)
    confirmed = [o.id for o in outliers if o.fields["incident"] != "none"]
    dismissed = [o.id for o in outliers if o.fields["incident"] == "none"]
    assert confirmed and dismissed
    runtime.vigil.repo.reviews.set_verdict(confirmed, "confirmed", None, "test")
    runtime.vigil.repo.reviews.set_verdict(dismissed, "dismissed", None, "test")
    runtime.vigil.repo.dispose()

    reviewed = vigil(tmp_path, "tune", "demo", *GRID)
    assert reviewed.returncode == 0, reviewed.stderr
    assert (f"ranked by average precision of {len(confirmed)} confirmed outliers against {len(dismissed)} "
            "dismissed") in reviewed.stdout
    header = next(line for line in reviewed.stdout.splitlines() if line.startswith("rank "))
    assert header.split()[-3:] == ["AP", "ROC", "AUC"]
    precision = [float(r[-2]) for r in ranked_rows(reviewed.stdout)]
    assert precision == sorted(precision, reverse=True)
    assert all(0.0 < p <= 1.0 for p in precision)


def test_tune_unknown_detector_and_too_few_records(tmp_path: Path) -> None:
    demo_config(tmp_path)
    unknown = vigil(tmp_path, "tune", "nope")
    # one answer for an unknown detector in every command (#28, finding 11)
    assert unknown.returncode == 2 and "unknown detector 'nope' (configured: demo)" in unknown.stderr
    empty = vigil(tmp_path, "tune", "demo", *GRID)
    assert (empty.returncode, empty.stderr.strip()) == (1, "vigil: detector 'demo' has no records yet")
