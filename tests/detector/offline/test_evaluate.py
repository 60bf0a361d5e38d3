"""`vigil evaluate`: real CSV and Parquet files, real small training, metrics checked against the scores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector.config import load_config
from detector.offline.evaluate import EvaluationInputError, evaluate_files, read_table
from training.quality import average_precision, roc_auc

CONFIG = """
[detectors.web]
source = {{ type = "http" }}
features = {{ cpu = "numeric", host = "categorical" }}
model = {{ epochs = 5, hidden = [16], latent = 2 }}
threshold = {{ target_fpr = 0.05 }}
training = {{ min_records = 100, max_records = {max_records}, first_window_trim = 0.0 }}

[detectors.other]
source = {{ type = "http" }}
features = {{ disk = "numeric" }}
model = {{ epochs = 5 }}

[detectors.half]
source = {{ type = "http" }}
features = {{ cpu = "numeric", disk = "numeric" }}

[detectors.seq]
source = {{ type = "http" }}
key_field = "host"
features = {{ cpu = "numeric" }}
model = {{ window = 4, epochs = 3, hidden = [8], latent = 2 }}
training = {{ min_records = 100, first_window_trim = 0.0 }}
"""


def records(n: int, seed: int, anomalies: int = 0) -> pd.DataFrame:
    """Server-like records: correlated numeric fields (mem has gaps), a host category, a boolean, a label."""
    rng = np.random.default_rng(seed)
    load = rng.normal(size=n)
    frame = pd.DataFrame({
        "ts": pd.date_range("2025-01-01", periods=n, freq="min").astype(str),
        "cpu": 50 + 10 * load,
        "mem": 30 + 5 * load + rng.normal(size=n),
        "host": rng.choice(["web-1", "web-2", "db-1"], n),
        "healthy": rng.random(n) < 0.9,
        "label": 0,
    })
    frame.loc[rng.random(n) < 0.05, "mem"] = np.nan
    if anomalies:
        rows = rng.choice(n, anomalies, replace=False)
        frame.loc[rows, "cpu"] += 60                       # cpu far from what mem says
        frame.loc[rows, "label"] = 1
    return frame


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    records(600, 0).to_csv(train, index=False)
    records(300, 1, anomalies=15).to_csv(test, index=False)
    return train, test


def config_file(tmp_path: Path, max_records: int = 50_000) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(max_records=max_records), encoding="utf-8")
    return path


def test_defaults_on_mixed_csv_find_the_anomalies(files: tuple[Path, Path]) -> None:
    train, test = files
    result = evaluate_files(train, test, label="label")
    assert [(f.name, f.kind, f.optional) for f in result.schema.features] == [
        ("cpu", "numeric", False), ("mem", "numeric", True), ("host", "categorical", False),
        ("healthy", "boolean", False)]                        # ts is not a feature, label neither
    scores = result.scores
    assert list(scores.columns) == [*read_table(test).columns, "score", "is_outlier"]
    assert len(scores) == 300
    assert np.isfinite(scores["score"]).all()
    assert (scores["is_outlier"] == (scores["score"] > result.model.threshold.value)).all()
    quality = result.quality
    assert quality is not None
    labels = scores["label"].to_numpy()
    assert quality.roc_auc == roc_auc(labels, scores["score"]) > 0.95
    assert quality.average_precision == average_precision(labels, scores["score"])
    rates = quality.rates
    assert (rates.n_anomalies, rates.n_normals) == (15, 285)
    assert rates.true_positives == int((scores["is_outlier"] & (scores["label"] == 1)).sum())
    assert rates.false_positives == int((scores["is_outlier"] & (scores["label"] == 0)).sum())
    assert result.model.threshold.target_fpr == 0.01         # ThresholdConfig's default
    # TRAIN has the label column: its labelled anomalies (none here) were left out and the rest is taken as a
    # window earlier models screened, as the daemon fits later windows: no first-window trim, no wide scale
    assert "trimmed_rows" not in result.model.report
    assert not result.model.report["wide_scale"]["used"]
    summary = result.summary()
    assert "ROC-AUC" in summary and "average precision" in summary and "FPR on normals" in summary
    assert "column 'ts' is a timestamp/key field" in summary
    assert "fitted as a window earlier models screened" in summary


def test_an_unlabelled_train_is_fitted_as_a_first_window_whose_incidents_do_not_vouch_for_each_other(
        tmp_path: Path) -> None:
    # TRAIN without labels holds an incident: 30 of 600 records with cpu far from what mem says. A detector's
    # first window is fitted with the first-window trim and the wide scale (training.first_window_wide_share):
    # at the scale of 5 neighbours the incident's records vouch for the same incident in TEST; at the wide
    # scale (a fifth of the remembered records) they do not
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    records(600, 0, anomalies=30).drop(columns="label").to_csv(train, index=False)
    records(300, 1, anomalies=15).to_csv(test, index=False)
    result = evaluate_files(train, test, label="label")
    assert result.model.report["wide_scale"]["used"] and result.model.report["wide_scale"]["k"] > 5
    assert "trimmed_rows" in result.model.report               # the first-window trim ran
    assert "fitted as a detector's first window" in result.summary()
    narrow = tmp_path / "narrow.toml"
    narrow.write_text('[detectors.d]\nsource = { type = "http" }\nfeatures = { other = "numeric" }\n'
                      "training = { first_window_wide_share = 0.0 }\n", encoding="utf-8")
    local = evaluate_files(train, test, load_config(narrow).detectors["d"], "d", label="label")
    assert not local.model.report["wide_scale"]["used"]
    assert result.quality is not None and local.quality is not None
    assert result.quality.average_precision > local.quality.average_precision + 0.2, (
        result.quality.average_precision, local.quality.average_precision)


def test_parquet_in_and_out_through_the_command(tmp_path: Path) -> None:
    train, test, out = tmp_path / "train.parquet", tmp_path / "test.parquet", tmp_path / "scores.parquet"
    records(400, 0).to_parquet(train)
    records(200, 1, anomalies=10).to_parquet(test)
    done = run_vigil(tmp_path, "evaluate", str(train), str(test), "--label-column", "label", "-o", str(out),
                     "--detector", "web", "--config", str(config_file(tmp_path)))
    assert done.returncode == 0, done.stderr
    scores = pd.read_parquet(out)
    assert len(scores) == 200
    assert scores["is_outlier"].dtype == bool
    assert "ROC-AUC" in done.stdout and "detector 'web'" in done.stdout


def test_without_labels_prints_no_metrics(files: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = files
    config = load_config(config_file(tmp_path))
    result = evaluate_files(train, test, config.detectors["web"], "web")
    assert result.quality is None
    assert "ROC-AUC" not in result.summary()
    assert "300 records scored" in result.summary()


def test_a_detector_brings_its_features_and_settings(files: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = files
    config = load_config(config_file(tmp_path))
    result = evaluate_files(train, test, config.detectors["web"], "web", label="label", target_fpr=0.1)
    assert result.schema.names == ["cpu", "host"]
    assert result.model.spec.hidden == (16,) and result.model.spec.latent == 2
    assert result.model.report["epochs_run"] == 5
    assert result.model.threshold.target_fpr == 0.1           # --target-fpr over the detector's 0.05
    assert "trimmed_rows" not in result.model.report          # this detector's first_window_trim is 0


def test_a_detector_none_of_whose_features_are_in_train_infers_the_schema(
        files: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = files
    config = load_config(config_file(tmp_path))
    result = evaluate_files(train, test, config.detectors["other"], "other", label="label")
    assert result.schema.names == ["cpu", "mem", "host", "healthy"]
    assert result.model.report["epochs_run"] == 5
    assert "none of detector 'other'" in result.summary()


def test_a_detector_with_some_features_missing_is_refused(files: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = files
    config = load_config(config_file(tmp_path))
    with pytest.raises(EvaluationInputError, match="but not 'disk'"):
        evaluate_files(train, test, config.detectors["half"], "half")


def test_train_rows_labelled_anomalous_are_left_out_and_the_window_is_capped(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    records(600, 0, anomalies=30).to_csv(train, index=False)
    records(100, 1, anomalies=5).to_csv(test, index=False)
    config = load_config(config_file(tmp_path, max_records=500))
    result = evaluate_files(train, test, config.detectors["web"], "web", label="label")
    assert result.n_train_rows == 600
    assert result.n_trained == 500                            # 570 normal rows, 500 of them evenly spaced
    assert result.model.report["n_rows"] == 500
    summary = result.summary()
    assert "30 TRAIN rows labelled 1 were left out" in summary
    assert "training.max_records" in summary


def test_a_sequence_detector_reads_times_and_keys(files: tuple[Path, Path], tmp_path: Path) -> None:
    train, test = files
    config = load_config(config_file(tmp_path))
    result = evaluate_files(train, test, config.detectors["seq"], "seq", label="label")
    assert result.model.report["settings"]["model"]["window"] == 4
    assert len(result.scores) == 300 and np.isfinite(result.scores["score"]).all()
    assert list(result.scores.columns) == [*read_table(test).columns, "score", "is_outlier"]
    assert result.quality is not None and result.quality.roc_auc > 0.6
    no_time = tmp_path / "no_time.csv"
    read_table(test).drop(columns=["ts"]).to_csv(no_time, index=False)
    read_table(train).drop(columns=["ts"]).to_csv(tmp_path / "train_no_time.csv", index=False)
    with pytest.raises(EvaluationInputError, match=r"the model reads time .* no 'ts' column"):
        evaluate_files(tmp_path / "train_no_time.csv", no_time, config.detectors["seq"], "seq")


def run_vigil(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_CONFIG"}
    return subprocess.run([sys.executable, "-m", "detector.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_mismatched_columns_exit_2_with_one_line(files: tuple[Path, Path], tmp_path: Path) -> None:
    train, _ = files
    other = tmp_path / "other.csv"
    records(50, 2).drop(columns=["mem"]).assign(region="eu").to_csv(other, index=False)
    done = run_vigil(tmp_path, "evaluate", str(train), str(other))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "vigil: " + str(other) + ": columns do not match those of train.csv: missing 'mem'; extra 'region'"]


def test_bad_label_exits_2_naming_column_and_row(files: tuple[Path, Path], tmp_path: Path) -> None:
    train, _ = files
    bad = tmp_path / "bad.csv"
    frame = records(50, 2)
    frame["label"] = frame["label"].astype(object)
    frame.loc[6, "label"] = "yes"
    frame.to_csv(bad, index=False)
    done = run_vigil(tmp_path, "evaluate", str(train), str(bad), "--label-column", "label")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "label column 'label' row 7 holds 'yes'" in done.stderr


def test_missing_label_value_is_an_error(files: tuple[Path, Path], tmp_path: Path) -> None:
    train, _ = files
    bad = tmp_path / "bad.csv"
    frame = records(50, 2)
    frame["label"] = frame["label"].astype(float)
    frame.loc[0, "label"] = np.nan
    frame.loc[1, "label"] = 2.0
    frame.to_csv(bad, index=False)
    with pytest.raises(EvaluationInputError, match="label column 'label' row 1 holds no value"):
        evaluate_files(train, bad, label="label")
    frame.loc[0, "label"] = 0.0
    frame.to_csv(bad, index=False)
    with pytest.raises(EvaluationInputError, match=r"label column .label. row 2 holds 2\.0;"):
        evaluate_files(train, bad, label="label")


def test_label_column_absent_from_test_is_named(files: tuple[Path, Path]) -> None:
    train, test = files
    with pytest.raises(EvaluationInputError, match="no label column 'anomaly'"):
        evaluate_files(train, test, label="anomaly")


def test_a_test_value_of_the_wrong_kind_is_named(files: tuple[Path, Path], tmp_path: Path) -> None:
    train, _ = files
    bad = tmp_path / "bad.csv"
    frame = records(50, 2)
    frame["cpu"] = frame["cpu"].astype(object)
    frame.loc[3, "cpu"] = "high"
    frame.to_csv(bad, index=False)
    with pytest.raises(EvaluationInputError, match="feature 'cpu' is numeric"):
        evaluate_files(train, bad)


def test_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(EvaluationInputError, match="cannot read it as Parquet"):
        read_table(broken)
