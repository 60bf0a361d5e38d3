"""Offline scoring of a file with a detector's active model (the `vigil score` command)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from detector.config import Config
from detector.errors import NoActiveModelError, NoRecordsError, UnknownDetectorError
from detector.frames import records_frame
from detector.records import RecordValidator, Rejection
from detector.sources.files import read_records
from detector.store.db import open_repository
from detector.store.types import PendingRecord
from training.fitted import FittedModel

__all__ = ["score_file"]

logger = logging.getLogger(__name__)


REJECTIONS_SHOWN = 20       # rejected records described in the summary (or the error when all are rejected)


def score_file(config: Config, detector: str, path: Path) -> tuple[pd.DataFrame, str]:
    """Score every valid record of `path`; returns the rows (inputs, score, flag, top feature) and a summary.
    `NoRecordsError` when there is no record to score: the file holds none, or every one was rejected."""
    if detector not in config.detectors:
        raise UnknownDetectorError(detector, list(config.detectors))
    det = config.detectors[detector]
    active = open_repository(config.store_url).active_model(detector)
    if active is None or active.weights is None:
        raise NoActiveModelError(detector)
    model = FittedModel.from_artifact(active.weights, active.meta)
    raws = read_records(path)
    batch = RecordValidator(det.feature_schema, det.ts_field, det.key_field).validate_many(raws)
    if not batch.accepted:
        reasons = "".join("\n  " + _describe(r) for r in batch.rejected[:REJECTIONS_SHOWN])
        if not batch.rejected:
            raise NoRecordsError(f"file {path.name}: no records to score")
        raise NoRecordsError(f"file {path.name}: none of its {len(batch.rejected)} records could be scored, "
                             f"every one was rejected by {detector}'s schema{reasons}")
    rows: list[dict[str, object]] = []
    if batch.accepted:
        pending = [PendingRecord(i, r.ts, r.key, r.fields) for i, r in enumerate(batch.accepted)]
        result = model.score(records_frame(pending, det.feature_schema, context=model.needs_context))
        for i, record in enumerate(batch.accepted):
            top = result.top_contributions(i, record.fields, 1)
            rows.append({"ts": record.ts.isoformat(), "key": record.key, **{
                n: record.fields.get(n) for n in det.feature_schema.names},
                "score": round(float(result.scores[i]), 6), "is_outlier": bool(result.is_outlier[i]),
                "top_feature": top[0]["feature"] if top else None})
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["ts", "key", *det.feature_schema.names, "score", "is_outlier", "top_feature"])
    flagged = int(frame["is_outlier"].sum()) if len(frame) else 0
    summary = (f"{len(frame)} records scored with {detector} model v{active.version} "
               f"(threshold {model.threshold.value:.4g}): {flagged} outliers, {len(batch.rejected)} rejected")
    for rejection in batch.rejected[:REJECTIONS_SHOWN]:
        summary += "\n  " + _describe(rejection)
    return frame, summary


def _describe(rejection: Rejection) -> str:
    return f"rejected: {rejection.message}"
