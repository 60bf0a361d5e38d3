"""Offline evaluation (`vigil evaluate`): train on a file of normal history, score a test file, measure."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from detector.config import DetectorConfig, FeatureConfig, HttpSourceConfig
from detector.errors import TrainingFailedError, VigilError
from detector.trainer import settings_for, trim_for
from training.errors import TrainingError
from training.fit import fit_model
from training.fitted import FittedModel
from training.quality import RatesAtThreshold, average_precision, rates_at, roc_auc
from training.schema import Feature, Schema
from training.sequence import KEY_COLUMN, TS_COLUMN

__all__ = ["Evaluation", "EvaluationInputError", "evaluate_files", "read_table", "write_scores"]

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
OUTPUT_COLUMNS = ("score", "is_outlier")


class EvaluationInputError(VigilError):
    """An input file cannot be evaluated as given (unreadable, mismatched columns, bad labels)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class LabelledQuality:
    """Ranking quality of the scores and the outcome of the threshold on a labelled TEST file."""

    roc_auc: float
    average_precision: float
    rates: RatesAtThreshold


@dataclass(frozen=True)
class Evaluation:
    """What `vigil evaluate` found: TEST's rows with score and is_outlier, the model, and the metrics."""

    scores: pd.DataFrame
    model: FittedModel
    schema: Schema
    settings_from: str              # "defaults" or "detector NAME"
    n_train_rows: int               # rows of TRAIN
    n_trained: int                  # rows the model was fitted on (before its own trim)
    quality: LabelledQuality | None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal: training, threshold, outliers and, with labels, the metrics."""
        kinds = [f.kind for f in self.schema.features]
        report, threshold = self.model.report, self.model.threshold
        lines = [
            f"trained on {self.n_trained} of {self.n_train_rows} TRAIN rows with the settings of "
            f"{self.settings_from}; {len(kinds)} features ({kinds.count('numeric')} numeric, "
            f"{kinds.count('categorical')} categorical, {kinds.count('boolean')} boolean)",
            f"model: {report['epochs_run']} epochs ({report['stop_reason']}), validation loss "
            f"{report['val_loss']:.4g}; threshold {threshold.value:.4g} ({threshold.method}, target FPR "
            f"{threshold.target_fpr:g}, {threshold.n_holdout} held-out scores, expected outlier rate "
            f"{threshold.expected_outlier_rate:.4g})",
        ]
        flagged = int(self.scores["is_outlier"].sum())
        share = flagged / len(self.scores)
        lines.append(f"TEST: {len(self.scores)} records scored, {flagged} outliers ({share:.2%})")
        if self.quality is not None:
            q, r = self.quality, self.quality.rates
            lines += [
                f"labels: n={r.n_anomalies + r.n_normals}, anomalies={r.n_anomalies}",
                f"ROC-AUC            {_fmt(q.roc_auc)}",
                f"average precision  {_fmt(q.average_precision)}",
                f"precision          {_fmt(r.precision)}  ({r.true_positives} of "
                f"{r.true_positives + r.false_positives} outliers are anomalies)",
                f"recall             {_fmt(r.recall)}  ({r.true_positives} of {r.n_anomalies} anomalies flagged)",
                f"FPR on normals     {_fmt(r.false_positive_rate)}  ({r.false_positives} of {r.n_normals}; "
                f"target {threshold.target_fpr:g})",
            ]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def _fmt(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.4f}"


def read_table(path: Path) -> pd.DataFrame:
    """A CSV file, or a Parquet file when the name ends in .parquet or .pq."""
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() in PARQUET_SUFFIXES else pd.read_csv(path)
    except FileNotFoundError:
        raise EvaluationInputError(path, "file not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise EvaluationInputError(path, f"cannot read it as {_format_name(path)}: {exc}") from None
    bad = [c for c in frame.columns if not isinstance(c, str)]
    if bad:
        raise EvaluationInputError(path, f"column names must be strings, got {bad[0]!r}")
    return frame


def _format_name(path: Path) -> str:
    return "Parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "CSV"


def write_scores(scores: pd.DataFrame, path: Path) -> None:
    """Write the scored TEST rows: Parquet when the name ends in .parquet or .pq, CSV otherwise."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        scores.to_parquet(path, index=False)
    else:
        scores.to_csv(path, index=False)


def labels_of(frame: pd.DataFrame, column: str, path: Path) -> npt.NDArray[np.int8]:
    """The 0/1 values of a label column; an error names the first row (1 = first data row) that is not 0 or 1."""
    if column not in frame.columns:
        raise EvaluationInputError(path, f"no label column {column!r} (columns: {', '.join(frame.columns)})")
    values = frame[column]
    numeric = pd.to_numeric(values, errors="coerce") if not pd.api.types.is_bool_dtype(values) else values
    ok = numeric.isin([0, 1]).to_numpy(dtype=bool)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        value = values.iloc[row]
        shown = "no value" if pd.isna(value) else repr(value.item() if isinstance(value, np.generic) else value)
        raise EvaluationInputError(
            path, f"label column {column!r} row {row + 1} holds {shown}; labels must be 0 (normal) or 1 (anomaly)")
    return numeric.to_numpy(dtype=np.int8)


def check_columns(train: pd.DataFrame, test: pd.DataFrame, label: str | None, train_path: Path,
                  test_path: Path) -> None:
    """TEST must hold TRAIN's columns, no more and no fewer (the label column aside)."""
    ignore = {label} if label else set()
    train_cols, test_cols = set(train.columns) - ignore, set(test.columns) - ignore
    if train_cols == test_cols:
        return
    problems = []
    if missing := sorted(train_cols - test_cols):
        problems.append("missing " + ", ".join(map(repr, missing)))
    if extra := sorted(test_cols - train_cols):
        problems.append("extra " + ", ".join(map(repr, extra)))
    raise EvaluationInputError(test_path, f"columns do not match those of {train_path.name}: "
                                          f"{'; '.join(problems)}")


def default_detector(schema: Schema) -> DetectorConfig:
    """A detector with every setting at its default and `schema`'s features (source: http)."""
    features = {f.name: FeatureConfig(kind=f.kind, optional=f.optional) for f in schema.features}
    return DetectorConfig(source=HttpSourceConfig(type="http"), features=dict(features))


def infer_schema(train: pd.DataFrame, test: pd.DataFrame, exclude: set[str]) -> Schema:
    """Kinds from TRAIN's dtypes; a feature is optional when it has a missing value in TRAIN or TEST."""
    inferred = Schema.infer(train, exclude=exclude)
    return Schema(features=tuple(
        Feature(f.name, f.kind, f.optional or bool(test[f.name].isna().any())) for f in inferred.features))


def choose_schema(train: pd.DataFrame, test: pd.DataFrame, det: DetectorConfig | None, name: str | None,
                  label: str | None, train_path: Path) -> tuple[Schema, DetectorConfig, list[str]]:
    """The schema and detector settings to train with, and notes on how they were chosen.

    A named detector whose features are all columns of TRAIN brings its declared schema. When
    TRAIN has none of them, the schema is inferred and only the detector's settings are used; a
    TRAIN with some but not all of them is refused (it is most likely the wrong file).
    """
    notes: list[str] = []
    if det is not None:
        features = set(det.features)
        present = features & set(train.columns)
        if present == features:
            return det.feature_schema, det, notes
        if present:
            missing = ", ".join(map(repr, sorted(features - present)))
            raise EvaluationInputError(train_path, f"has some of detector {name!r}'s features but not {missing}; "
                                                   "give a file with all of them, or with none to infer the schema")
        notes.append(f"TRAIN has none of detector {name!r}'s features: the schema is inferred from its columns")
    ts_field, key_field = (det.ts_field, det.key_field) if det is not None else ("ts", "key")
    exclude = {c for c in (label, ts_field, key_field) if c}
    for column in sorted(exclude & set(train.columns) - {label}):
        notes.append(f"column {column!r} is a timestamp/key field, not a feature")
    schema = infer_schema(train, test, exclude)
    return schema, det if det is not None else default_detector(schema), notes


def _training_rows(train: pd.DataFrame, label: str | None, det: DetectorConfig, train_path: Path,
                   notes: list[str]) -> pd.DataFrame:
    """TRAIN's rows the daemon would train on: labelled anomalies left out, at most max_records (evenly spaced
    over all of them, as the daemon samples a larger window; the newest for a sequence model)."""
    rows = train
    if label is not None and label in train.columns:
        anomalous = labels_of(train, label, train_path) == 1
        if anomalous.any():
            notes.append(f"{int(anomalous.sum())} TRAIN rows labelled 1 were left out of training")
            rows = train[~anomalous]
    cap = det.training.max_records
    if len(rows) > cap and det.model.window > 1:
        notes.append(f"trained on the last {cap} rows of TRAIN (training.max_records; a sequence model)")
        rows = rows.iloc[-cap:]
    elif len(rows) > cap:
        notes.append(f"trained on {cap} rows of TRAIN, evenly spaced over all {len(rows)} (training.max_records)")
        rank = np.arange(1, len(rows) + 1)
        rows = rows.iloc[np.flatnonzero((rank * cap) // len(rows) > ((rank - 1) * cap) // len(rows))]
    if len(rows) < det.training.min_records:
        notes.append(f"{len(rows)} training rows: the daemon skips training below training.min_records="
                     f"{det.training.min_records}")
    return rows.reset_index(drop=True)


def reads_time(det: DetectorConfig) -> bool:
    """Whether the detector's model reads timestamps and keys (sequence mode or time features)."""
    return det.model.window > 1 or det.model.time_features


def with_context(frame: pd.DataFrame, det: DetectorConfig, path: Path) -> pd.DataFrame:
    """`frame` plus the timestamp and key columns a sequence model reads, from `ts_field` and `key_field`."""
    if det.ts_field not in frame.columns:
        raise EvaluationInputError(path, f"the model reads time (model.window {det.model.window}, time_features "
                                         f"{det.model.time_features}) but there is no {det.ts_field!r} column")
    ts = pd.to_datetime(frame[det.ts_field], utc=True, errors="coerce", format="mixed")
    if ts.isna().any():
        row = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise EvaluationInputError(path, f"column {det.ts_field!r} row {row + 1} holds "
                                         f"{frame[det.ts_field].iloc[row]!r}, not a timestamp")
    keys: pd.Series[str] | str = ""
    if det.key_field in frame.columns:
        keys = frame[det.key_field].astype(str).where(frame[det.key_field].notna(), "")
    return frame.assign(**{TS_COLUMN: ts, KEY_COLUMN: keys})


def _fit(rows: pd.DataFrame, schema: Schema, det: DetectorConfig, screened: bool = False) -> FittedModel:
    """Fit as the daemon fits a detector's first model (an unscreened window: trimmed by
    training.first_window_trim, judged at the wide scale of training.first_window_wide_share), or, when
    `screened` (TRAIN's labels left its known anomalies out), as it fits a later window earlier models
    screened: neither."""
    model, train, threshold = settings_for(det, first=not screened)
    try:
        return fit_model(rows, schema, model, train, threshold, trim_fraction=trim_for(det, not screened))
    except (TrainingError, ValueError, KeyError, RuntimeError) as exc:
        raise TrainingFailedError(f"training failed: {exc}") from exc


def evaluate_files(train_path: Path, test_path: Path, det: DetectorConfig | None = None, name: str | None = None,
                   label: str | None = None, target_fpr: float | None = None) -> Evaluation:
    """Train on TRAIN (taken as normal) with `det`'s settings (defaults when None), score TEST, measure."""
    train, test = read_table(train_path), read_table(test_path)
    check_columns(train, test, label, train_path, test_path)
    if len(test) == 0:
        raise EvaluationInputError(test_path, "no records")
    if taken := [c for c in OUTPUT_COLUMNS if c in test.columns]:
        raise EvaluationInputError(test_path, f"column {taken[0]!r} would clash with the output column of that "
                                              "name; rename it in TRAIN and TEST")
    truth = labels_of(test, label, test_path) if label is not None else None
    schema, settings, notes = choose_schema(train, test, det, name, label, train_path)
    if target_fpr is not None:
        settings = settings.model_copy(
            update={"threshold": settings.threshold.model_copy(update={"target_fpr": target_fpr})})
    rows = _training_rows(train, label, settings, train_path, notes)
    frame = test
    if reads_time(settings):        # TEST's first records of each key get their windows from TRAIN's records
        rows, frame = with_context(rows, settings, train_path), with_context(test, settings, test_path)
        frame = pd.concat([rows, frame], ignore_index=True)
    screened = label is not None and label in train.columns
    notes.append("TRAIN has the label column: fitted as a window earlier models screened (no first-window trim "
                 "or wide scale)" if screened else "TRAIN has no label column: fitted as a detector's first window "
                 "(training.first_window_trim, training.first_window_wide_share)")
    model = _fit(rows, schema, settings, screened)
    try:
        result = model.score(frame)
    except (ValueError, KeyError) as exc:
        raise EvaluationInputError(test_path, f"cannot score it: {exc}") from None
    scores, flags = result.scores[-len(test):], result.is_outlier[-len(test):]
    scored = test.copy()
    scored["score"], scored["is_outlier"] = scores, flags
    quality = None
    if truth is not None:
        quality = LabelledQuality(roc_auc(truth, scores), average_precision(truth, scores), rates_at(truth, flags))
    return Evaluation(scored, model, schema, f"detector {name!r}" if det is not None else "defaults",
                      len(train), len(rows), quality, notes)

