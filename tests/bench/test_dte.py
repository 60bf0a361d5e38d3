"""The DTE protocols' splits, the published tables and one small set end to end (bench/dte.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.dte import (
    PUBLISHED,
    TABULAR,
    adbench_rows,
    bootstrap_rows,
    parse_args,
    protocol_split,
    published,
    run_set,
    semi_supervised_split,
    set_index,
    summarise,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")


def test_semi_supervised_split_takes_the_first_half_of_the_normals_in_file_order() -> None:
    y = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0])          # normals at 1, 2, 4, 5, 6, 8, 9, 10 (8 of them)
    train, test = semi_supervised_split(y)
    assert train.tolist() == [1, 2, 4, 5]
    assert sorted(test.tolist()) == [0, 3, 6, 7, 8, 9, 10]
    assert (y[test] == 1).sum() == 3 and (y[train] == 0).all()
    odd = np.array([0] * 7 + [1])                               # round(3.5) = 4 (banker's rounding, as DTE's code)
    assert semi_supervised_split(odd)[0].tolist() == [0, 1, 2, 3]
    assert np.array_equal(protocol_split("dte", y, seed=5)[0], train)      # the seed does not move the split


def test_bootstrap_draws_n_rows_with_replacement_and_is_seeded() -> None:
    rows = bootstrap_rows(1000, seed=0)
    assert len(rows) == 1000 and rows.min() >= 0 and rows.max() < 1000
    assert len(np.unique(rows)) < 1000                          # with replacement: ~63 % distinct
    assert 550 < len(np.unique(rows)) < 720
    assert np.array_equal(rows, bootstrap_rows(1000, seed=0))
    assert not np.array_equal(rows, bootstrap_rows(1000, seed=1))
    y = np.array([0] * 90 + [1] * 10)
    train, test = protocol_split("dte-unsup", y, seed=3)
    assert len(train) == 100 and np.array_equal(test, np.arange(100))
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol_split("dte-x", y, seed=0)


def test_summary_counts_refusals_as_losses_and_as_half_in_the_second_mean() -> None:
    rows = pd.DataFrame([
        {"dataset": "a", "seed": 0, "vigil_auc": 0.9, "vigil_ap": 0.5, "vigil_fpr": 0.01, "knn_auc": 0.8,
         "knn_ap": 0.4, "iforest_auc": 0.7, "iforest_ap": 0.3, "paper_dte_np": 0.85, "paper_knn": 0.95,
         "paper_iforest": 0.7},
        {"dataset": "b", "seed": 0, "vigil_error": "TrainingFailedError: too few rows", "knn_auc": 0.6,
         "knn_ap": 0.2, "iforest_auc": 0.6, "iforest_ap": 0.2, "paper_dte_np": 0.7, "paper_knn": 0.7,
         "paper_iforest": 0.6},
    ])
    s = summarise(rows, "dte")
    assert s["n_ran"] == 1 and s["refused"] == {"b": "TrainingFailedError: too few rows"}
    assert s["mean_ran"]["vigil_auc"] == pytest.approx(0.9) and s["mean_ran"]["paper_knn"] == pytest.approx(0.95)
    assert s["mean_all"]["vigil_auc"] == pytest.approx(0.7) and s["mean_all"]["paper_knn"] == pytest.approx(0.825)
    assert s["wins"]["DTE-NP"]["won"] == 1 and s["wins"]["DTE-NP"]["lost"] == {}
    assert s["wins"]["KNN"]["won"] == 0 and s["wins"]["KNN"]["lost"] == {"a": pytest.approx(-5.0)}


@needs_data
@pytest.mark.parametrize(("protocol", "means"), [
    ("dte", {"DTE-NP": 84.65, "KNN": 84.26, "DTE-C": 83.58, "ICL": 82.21}),
    ("dte-unsup", {"MCD": 77.28, "IForest": 76.68, "CBLOF": 74.77, "KNN": 74.20}),
])
def test_published_tables_cover_the_43_sets_and_give_the_readme_means(protocol: str, means: dict[str, float]) -> None:
    names = pd.read_csv(TABULAR / "INDEX.csv")["name"]
    assert len(names) == 43 and set(set_index()["name"]) == set(names)
    table = published(protocol, PUBLISHED)
    assert len(table) == 57 and "magic_gamma" in table.index and "magic.gamma" not in table.index
    assert set(names) <= set(table.index)
    ours = table.loc[names]
    assert not ours.isna().any().any()
    for column, mean in means.items():
        assert ours[column].mean() == pytest.approx(mean, abs=0.01), column


@needs_data
def test_set_order_is_smallest_first() -> None:
    index = set_index()
    assert index["n"].is_monotonic_increasing
    assert index["name"].iloc[0] == "hepatitis" and index["name"].iloc[-1] == "donors"


@needs_data
def test_knn_on_the_semi_supervised_split_matches_the_papers_column() -> None:
    """The protocol check on a set DTE's generator leaves whole (1,831 rows): pyod-style kNN gives Table 1's KNN."""
    pytest.importorskip("sklearn", reason="kNN needs scikit-learn: pip install -e '.[bench]'")
    record = run_set("dte", "cardio", 0, methods=("knn",), paper=published("dte"))
    assert record["n_train"] == round(0.5 * 1655) and record["n_test_anomalies"] == 176
    assert record["knn_auc"] == pytest.approx(record["paper_knn"], abs=0.0005)


def test_adbench_resampling_bootstraps_small_sets_and_subsamples_large_ones() -> None:
    small = adbench_rows(200, seed=0)
    assert small is not None and len(small) == 1000 and small.max() < 200
    again, other = adbench_rows(200, seed=0), adbench_rows(200, seed=1)
    assert again is not None and other is not None
    assert np.array_equal(small, again) and not np.array_equal(small, other)
    assert adbench_rows(5000, seed=0) is None
    large = adbench_rows(60_000, seed=0)
    assert large is not None and len(large) == 50_000 and len(np.unique(large)) == 50_000


def test_a_set_vigil_refuses_is_recorded_with_its_message() -> None:
    pytest.importorskip("sklearn", reason="kNN needs scikit-learn: pip install -e '.[bench]'")
    rng = np.random.default_rng(0)
    y = np.array([0] * 40 + [1] * 5, dtype=np.int8)           # 20 training normals: under Vigil's fewest rows
    x = rng.normal(size=(45, 3)).astype(np.float32)
    record = run_set("dte", "tiny", 0, methods=("vigil", "knn"), data=(x, y))
    assert "vigil_auc" not in record and "Not enough rows" in record["vigil_error"]
    assert record["n_train"] == 20 and 0.0 <= record["knn_auc"] <= 1.0
    s = summarise(pd.DataFrame([record]), "dte")
    assert s["n_ran"] == 0 and "tiny" in s["refused"] and s["mean_all"]["vigil_auc"] == 0.5


@needs_data
def test_model_settings_are_parsed_as_json_and_never_overwrite_the_defaults_results() -> None:
    args = parse_args(["--protocol", "dte-unsup", "--sets", "wine", "--model", "wide_share=0.2",
                           "--model", "neighbor_search=exact"])
    assert args.model == {"wide_share": 0.2, "neighbor_search": "exact"}
    with pytest.raises(SystemExit):
        parse_args(["--protocol", "dte-unsup", "--model", "wide_share=0.2"])
    with pytest.raises(SystemExit):
        parse_args(["--protocol", "dte-unsup", "--sets", "wine", "--model", "wide_share"])


def test_the_prepared_table_takes_resampled_sets_from_their_seed_mean_and_the_others_whole(tmp_path: Path) -> None:
    from bench.dte_combined import combined, report

    def rows(names: list[str], seeds: list[int], auc: dict[tuple[str, int], float]) -> pd.DataFrame:
        base = {"n": 100, "d": 3, "vigil_ap": 0.5, "knn_auc": 0.6, "knn_ap": 0.4, "iforest_auc": 0.7,
                "iforest_ap": 0.3, "paper_mcd": 0.8, "paper_iforest": 0.75, "paper_knn": 0.65}
        return pd.DataFrame([{"dataset": name, "seed": seed, **base, "vigil_auc": auc[(name, seed)]}
                             for name in names for seed in seeds])

    whole = rows(["a", "b", "c"], [0], {("a", 0): 0.9, ("b", 0): 0.1, ("c", 0): 0.7})
    whole = pd.concat([whole, whole.assign(vigil_auc=[0.91, 0.1, 0.7])])     # a set run again: the last row counts
    whole.to_csv(tmp_path / "quality_dte_unsup.csv", index=False)
    rows(["b"], [0, 1, 2], {("b", 0): 0.2, ("b", 1): 0.4, ("b", 2): 0.9}).to_csv(
        tmp_path / "quality_dte_unsup_adbench.csv", index=False)
    table = combined("dte-unsup", tmp_path)
    assert table["vigil_auc"].round(4).to_dict() == {"a": 0.91, "b": 0.5, "c": 0.7}
    assert table.loc["b", "source"] == "resampled, 3 seeds" and table.loc["a", "source"] == "whole, seed 0"
    text = report("dte-unsup", table)
    assert "| Vigil (defaults, as `vigil evaluate`) | **0.7033** |" in text
    assert "above the paper's MCD on 1 of 3 sets; below it on 2: b, c." in text
