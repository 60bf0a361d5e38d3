"""Replay a recorded history through the daemon's own machinery in simulated time (`vigil replay`).

The records of a file are ingested in time order into a scratch store, through the same sink, validation,
on-ingest scoring, training runs (first-model check, the training schedule's slots on the rolling window
minus flagged records, the first window screened), alert hygiene and model versions as the running daemon
uses. Time is the records' own: a training slot falls between the last record before it and the first
at or after it, so every record is scored by the model that was active when it arrived, and no model ever
trained on a record before that record was scored (except the first model, which scores the window it
trained on, as the daemon scores its first backfill). Maintenance windows given to the replay (or copied
from the daemon's store by the command) are declared in the scratch store first: their records are scored,
never flagged and never trained on, as in the daemon.
"""

from __future__ import annotations

import bisect
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry

from detector.config import Config
from detector.errors import NoRecordsError, UnknownDetectorError
from detector.offline.evaluate import labels_of
from detector.records import RecordValidator, Rejection
from detector.review import ReviewService
from detector.scheduler import training_trigger
from detector.sources.files import read_records
from training.quality import RatesAtThreshold, average_precision, rates_at, roc_auc

__all__ = ["Maintenance", "Replay", "replay_file", "replay_records"]

logger = logging.getLogger(__name__)

SOURCE = "replay"

Maintenance = tuple[datetime, datetime, str | None]     # start (inclusive), end (exclusive), reason


@dataclass
class Replay:
    """What a replay gives: one row per accepted record, in time order, and what happened on the way."""

    records: pd.DataFrame            # ts, key, the record's fields, score, threshold, is_outlier, model_version
    rejected: list[Rejection]
    training_runs: list[tuple[datetime, str, str]]      # (simulated time, result, message)
    seconds: float
    label_column: str | None = None
    quality: tuple[float, float, RatesAtThreshold] | None = None       # ROC-AUC, AP, rates at the flags
    notes: list[str] = field(default_factory=list)
    maintenance: list[Maintenance] = field(default_factory=list)

    def summary(self) -> str:
        frame = self.records
        scored = int(frame["score"].notna().sum())
        flagged = int(frame["is_outlier"].sum())
        versions = sorted({int(v) for v in frame["model_version"].dropna()})
        successes = sum(1 for _, result, _ in self.training_runs if result == "success")
        lines = [
            f"replayed {len(frame)} records ({len(self.rejected)} rejected) in {self.seconds:.1f} s: "
            f"{successes} models trained, {len(self.training_runs)} training runs; {scored} records scored by "
            f"{len(versions)} model versions, {flagged} outliers ({flagged / max(1, len(frame)):.2%})",
        ]
        if self.maintenance:
            ts = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
            inside = np.zeros(len(frame), dtype=bool)
            for start, end, _ in self.maintenance:
                inside |= ((ts >= start) & (ts < end)).to_numpy()
            lines.append(f"{len(self.maintenance)} maintenance windows: {int(inside.sum())} records inside them, "
                         "scored but never flagged nor trained on")
        if self.quality is not None:
            auc, ap, r = self.quality
            lines += [
                f"labels ({self.label_column}): n={r.n_anomalies + r.n_normals}, anomalies={r.n_anomalies}",
                f"ROC-AUC            {auc:.4f}",
                f"average precision  {ap:.4f}",
                f"precision          {r.precision:.4f}  ({r.true_positives} of "
                f"{r.true_positives + r.false_positives} outliers are anomalies)",
                f"recall             {r.recall:.4f}  ({r.true_positives} of {r.n_anomalies} anomalies flagged)",
                f"FPR on normals     {r.false_positive_rate:.4f}  ({r.false_positives} of {r.n_normals})",
            ]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def replay_file(config: Config, detector: str, path: Path, label_column: str | None = None,
                store_dir: Path | None = None,
                on_training: Callable[[datetime, str, str], None] | None = None,
                maintenance: Sequence[Maintenance] = ()) -> Replay:
    """Replay the records of `path` (CSV, Parquet or NDJSON) through `detector` of `config` (see the module).

    `label_column` (0/1, 1 = anomaly) is kept out of the records and scores the flags. The scratch store is a
    SQLite file in `store_dir` (a temporary folder, removed afterwards, when None). `maintenance`: windows
    declared for the detector before the first record (times with a zone; end after start).
    """
    if detector not in config.detectors:
        raise UnknownDetectorError(detector, list(config.detectors))
    raws = read_records(path)
    labels = None
    if label_column is not None:
        table = pd.DataFrame({label_column: [r.get(label_column) if isinstance(r, dict) else None for r in raws]})
        labels = labels_of(table, label_column, path)
        raws = [{k: v for k, v in r.items() if k != label_column} if isinstance(r, dict) else r for r in raws]
    return replay_records(config, detector, raws, labels, label_column, store_dir, on_training, origin=path.name,
                          maintenance=maintenance)


def replay_records(config: Config, detector: str, raws: list[Any], labels: np.ndarray | None = None,
                   label_column: str | None = None, store_dir: Path | None = None,
                   on_training: Callable[[datetime, str, str], None] | None = None,
                   origin: str | None = None, maintenance: Sequence[Maintenance] = ()) -> Replay:
    """Replay raw records (dicts as a source gives them) through `detector`; `labels` [len(raws)] or None;
    `maintenance` as for `replay_file`."""
    if store_dir is not None:
        return _replay(config, detector, raws, labels, label_column, store_dir, on_training, origin, maintenance)
    with tempfile.TemporaryDirectory(prefix="vigil-replay-") as scratch:
        return _replay(config, detector, raws, labels, label_column, Path(scratch), on_training, origin,
                       maintenance)


def _scratch_config(config: Config, detector: str, store_dir: Path) -> Config:
    """`config` with only `detector`, a SQLite store in `store_dir` and no HTTP server."""
    daemon = config.daemon.model_copy(update={"state_dir": store_dir})
    store = config.store.model_copy(update={"url": f"sqlite:///{store_dir / 'replay.db'}"})
    http = config.http.model_copy(update={"token_file": store_dir / "api-token"})
    return config.model_copy(update={"daemon": daemon, "store": store, "http": http,
                                     "detectors": {detector: config.detectors[detector]}})


def _replay(config: Config, detector: str, raws: list[Any], labels: np.ndarray | None, label_column: str | None,
            store_dir: Path, on_training: Callable[[datetime, str, str], None] | None,
            origin: str | None, maintenance: Sequence[Maintenance]) -> Replay:
    from detector.daemon import build_runtime  # the daemon imports the offline tools' modules

    started = time.perf_counter()
    det = config.detectors[detector]
    batch = RecordValidator(det.feature_schema, det.ts_field, det.key_field).validate_many(raws)
    bad = {r.index for r in batch.rejected}
    kept = [i for i in range(len(raws)) if i not in bad]
    if not kept:
        raise NoRecordsError(f"{origin or 'input'}: none of its {len(raws)} records could be replayed"
                             + (f" ({batch.rejected[0].message})" if batch.rejected else ""))
    # time order (stable: records of the same time keep their order); records go to the store in this order
    order = sorted(range(len(kept)), key=lambda j: batch.accepted[j].ts)
    times = [batch.accepted[j].ts for j in order]
    ordered = [raws[kept[j]] for j in order]

    runtime = build_runtime(_scratch_config(config, detector, store_dir), CollectorRegistry(),
                            with_process_metrics=False)
    runs: list[tuple[datetime, str, str]] = []
    try:
        windows = ReviewService(lambda: runtime.config, runtime.vigil.repo.reviews)
        for window in maintenance:      # checked as the CLI and the API check them (InvalidWindowError)
            windows.add_window(detector, *window)
        sink = runtime.vigil.sink(detector, SOURCE)
        trigger = training_trigger(det.training)
        tick = timedelta(seconds=det.scoring.interval)
        chunk = det.scoring.batch_size

        def train(at: datetime, kind: str) -> bool:
            outcome = runtime.trainer.train(detector, kind)
            runs.append((at, outcome.result, outcome.message))
            if on_training is not None:
                on_training(at, outcome.result, outcome.message)
            runtime.scorer.score(detector)         # what waited for a model (or a sequence model's records)
            return outcome.result == "success"

        position, has_model = 0, False
        next_slot: datetime | None = None
        while position < len(ordered):
            if not has_model:
                # the daemon looks for its first model every scoring interval
                end = bisect.bisect_left(times, times[position] + tick, lo=position + 1)
            elif next_slot is not None and times[position] >= next_slot:
                # the slot comes before the next record: train now. Slots without a record since the last
                # one would train on the same window again: the next slot is the first after the next record.
                train(next_slot, "replay")
                next_slot = trigger.get_next_fire_time(None, times[position] + timedelta(microseconds=1))
                continue
            else:
                end = len(times) if next_slot is None else bisect.bisect_left(times, next_slot, lo=position)
            end = min(end, position + chunk)
            sink.ingest(ordered[position:end], origin=origin)
            runtime.scorer.score(detector)
            position = end
            if not has_model and runtime.trainer.ready_for_first_model(detector):
                has_model = train(times[end - 1], "first")
                if has_model:
                    next_slot = trigger.get_next_fire_time(None, times[end - 1] + timedelta(microseconds=1))
        runtime.scorer.score(detector)
        stored = runtime.vigil.repo.scored_records(detector)
    finally:
        runtime.vigil.repo.dispose()

    names = det.feature_schema.names
    frame = pd.DataFrame({
        "ts": [r.ts.isoformat() for r, *_ in stored],
        "key": [r.key for r, *_ in stored],
        **{name: [r.fields.get(name) for r, *_ in stored] for name in names},
        "score": [s for _, s, *_ in stored],
        "threshold": [t for *_, t in stored],
        "is_outlier": [o for _, _, o, _, _ in stored],
        "model_version": pd.array([v for _, _, _, v, _ in stored], dtype="Int64"),
    })
    result = Replay(frame, list(batch.rejected), runs, time.perf_counter() - started, label_column,
                    maintenance=list(maintenance))
    if len(frame) != len(ordered):
        result.notes.append(f"{len(ordered) - len(frame)} records were not stored")
    if labels is not None and len(frame) == len(ordered):
        y = np.asarray(labels)[[kept[j] for j in order]]
        frame.insert(2 + len(names), label_column or "label", y)
        scores = frame["score"].to_numpy(dtype=np.float64, na_value=np.nan)
        scored = np.isfinite(scores)
        if scored.sum() < len(frame):
            result.notes.append(f"{int((~scored).sum())} records were never scored (no model yet)")
        if scored.any():
            flags = frame["is_outlier"].to_numpy(dtype=bool)
            result.quality = (roc_auc(y[scored], scores[scored]), average_precision(y[scored], scores[scored]),
                              rates_at(y[scored], flags[scored]))
    return result

