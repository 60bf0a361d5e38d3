"""The score job: claim pending records, score them with the active model, store results and outliers."""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from detector.alerting import confirmed, first_times, within_floors
from detector.config import AlertingConfig
from detector.errors import StorageError
from detector.frames import records_frame, to_json_value
from detector.records import ValidRecord
from detector.service import Vigil
from detector.store.models import artifact_problem
from detector.store.types import IngestScores, MaintenanceWindow, ModelVersion, PendingRecord, ScoredRecord
from training.errors import TrainingError
from training.fitted import FittedModel
from training.result import ScoreResult

__all__ = ["ACTIVE_MODEL_MAX_AGE_S", "WINDOWS_MAX_AGE_S", "ActiveModel", "BatchScores", "ModelCache", "Scorer"]

ACTIVE_MODEL_MAX_AGE_S = 1.0   # scoring on ingest sees a newly promoted model version within this long
WINDOWS_MAX_AGE_S = 1.0        # and a maintenance window another process declared

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActiveModel:
    id: int
    version: int
    model: FittedModel


class ModelCache:
    """Keeps each detector's active model loaded; reloads when another version becomes active.

    A version that cannot be loaded (its metadata or weights unreadable, its weights not the ones saved
    with it, or not a model this code can interpret) is set aside as `rejected`, with the reason logged
    and kept in its row, and the newest earlier version that loads becomes active instead; where none
    does, the detector has no model and trains a first one (the score job sees to it)."""

    def __init__(self, vigil: Vigil) -> None:
        self._vigil = vigil
        self._models: dict[str, ActiveModel] = {}
        # when each detector's active version was last read, and the store's count of model changes then
        self._checked: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._loading = threading.Lock()      # one load (and fall-back) at a time

    def get(self, name: str, max_age: float = 0.0) -> ActiveModel | None:
        """The active model of `name`, loaded once per version. With `max_age` a model whose version was
        confirmed in the store less than that many seconds ago, and that this process has not replaced
        since, is returned without asking the store again (the ingest path: one query less per batch; a
        version another process promoted is seen up to `max_age` later)."""
        repo = self._vigil.repo
        if max_age > 0:
            with self._lock:
                cached = self._models.get(name)
                checked, changes = self._checked.get(name, (-math.inf, -1))
            if cached is not None and changes == repo.model_changes and time.monotonic() - checked < max_age:
                return cached
        asked = (time.monotonic(), repo.model_changes)
        active_id = repo.active_model_id(name)
        with self._lock:
            self._checked[name] = asked
            cached = self._models.get(name)
            if active_id is None:
                self._models.pop(name, None)
                return None
            if cached is not None and cached.id == active_id:
                return cached
        return self._load_active(name)

    def _load_active(self, name: str) -> ActiveModel | None:
        """Load the active version of `name`, or set it aside and fall back (see the class)."""
        with self._loading:
            row = self._vigil.repo.active_model(name)
            with self._lock:
                cached = self._models.get(name)
            if row is None or (cached is not None and cached.id == row.id):   # loaded by another thread meanwhile
                return cached if row is not None else None
            model, problem = self._load(row)
            found = (row, model) if model is not None else self._fall_back(name, row, problem)
            with self._lock:
                if found is None:
                    self._models.pop(name, None)
                    return None
                version, model = found
                loaded = ActiveModel(version.id, version.version, model)
                self._models[name] = loaded
        self._vigil.metrics.set_active_model(
            name, loaded.version, model.threshold.value, model.threshold.expected_outlier_rate,
            version.created_at.timestamp())
        logger.info("model loaded", extra={"detector": name, "version": loaded.version})
        return loaded

    @staticmethod
    def _load(row: ModelVersion) -> tuple[FittedModel | None, str]:
        """The model of a stored version (read with its weights), or None and why it cannot be loaded."""
        problem = artifact_problem(row)
        if problem is not None:
            return None, problem
        try:
            return FittedModel.from_artifact(row.weights or b"", row.meta), ""
        except TrainingError as exc:
            return None, str(exc)

    def _set_aside(self, name: str, row: ModelVersion, problem: str) -> None:
        self._vigil.metrics.model_load_failures.labels(name).inc()
        self._vigil.metrics.errors.labels("scoring").inc()
        logger.error("model version cannot be loaded: it is set aside as rejected", extra={
            "detector": name, "version": row.version, "status": row.status, "error": problem})

    def _fall_back(self, name: str, broken: ModelVersion, problem: str) -> tuple[ModelVersion, FittedModel] | None:
        """Set aside the active version `broken` and activate the newest other version that loads (retired
        or candidate); that version and its model, or None where none loads (or another process changed the
        active version meanwhile)."""
        repo = self._vigil.repo
        self._set_aside(name, broken, problem)
        for version in repo.fallback_versions(name):
            candidate = repo.get_model(name, version, with_weights=True)
            if candidate is None:
                continue
            model, why = self._load(candidate)
            if model is None:
                self._set_aside(name, candidate, why)
                repo.reject_model(candidate, why)
                continue
            if not repo.reject_model(broken, problem, fallback=candidate):
                return None      # the active version changed meanwhile: the next look loads that one
            logger.warning("fell back to the newest model version that loads", extra={
                "detector": name, "version": candidate.version, "instead_of": broken.version})
            return candidate, model
        repo.reject_model(broken, problem)
        logger.error("no model version of the detector can be loaded: a new one is trained",
                     extra={"detector": name, "rejected": broken.version})
        return None


@dataclass(frozen=True, slots=True)
class BatchScores:
    """What scoring a batch of records gives, by row: every score; the flagged rows' explanations, the
    out-of-distribution notes of unusual rows, and why alert hygiene held back rows over the threshold."""

    scores: list[float]
    outliers: dict[int, dict[str, Any]]
    ood: dict[int, dict[str, Any]]
    suppressed: dict[int, str]


class Scorer:
    """Scores every record of a detector exactly once: as it is ingested (`score_on_ingest`, stored by the
    record path), or later, batch by batch, from the pending records the score job claims."""

    def __init__(self, vigil: Vigil, cache: ModelCache, concurrency: int | None = None) -> None:
        self._vigil = vigil
        self._cache = cache
        self.incompatible: set[str] = set()   # detectors whose active model no longer fits their features
        # Batches of different detectors scored at once, at most one per CPU: more only adds memory (a hybrid
        # model's neighbour search allocates distance chunks of 64 MiB and more per batch) and contention for
        # the same cores; bench/throughput.py part 5 measures it.
        self._slots = threading.BoundedSemaphore(concurrency or os.cpu_count() or 1)
        self._lock = threading.Lock()
        self._window_cache: dict[str, tuple[float, int, list[MaintenanceWindow]]] = {}

    def score_on_ingest(self, name: str, records: Sequence[ValidRecord],
                        numeric: npt.NDArray[np.float64] | None = None) -> IngestScores | None:
        """Score a batch of just-validated records with the active model, for the record path to store with
        them (the records go in already scored, the flagged ones as outliers, in one transaction).
        `numeric` (the validator's block of every record's values, when the batch is all plain numbers)
        saves reading the fields again.

        None (the records wait as pending for the score job) when the detector scores on its interval only
        (`scoring.on_ingest = false`), has no usable active model, needs earlier records to score one
        (sequence mode), or scoring failed (counted and logged).
        """
        try:
            return self._score_on_ingest(name, records, numeric)
        except StorageError:
            return None    # the store did not answer the model lookup: storing the batch fails the same way
        except Exception as exc:   # the records must still be stored: the score job retries them
            self._vigil.metrics.errors.labels("scoring").inc()
            logger.error("scoring on ingest failed; the records wait for the score job",
                         extra={"detector": name, "records": len(records), "error": str(exc)}, exc_info=exc)
            return None

    def count_ingest(self, name: str, scores: IngestScores, seconds: float) -> None:
        """Count a batch scored on ingest, once it is stored."""
        self._count(name, scores.scores, scores.outliers, scores.ood, scores.suppressed, scores.threshold)
        self._vigil.metrics.scoring_duration.labels(name).observe(seconds)

    def _score_on_ingest(self, name: str, records: Sequence[ValidRecord],
                         numeric: npt.NDArray[np.float64] | None = None) -> IngestScores | None:
        det = self._vigil.detector(name)
        if not records or not det.scoring.on_ingest or self._vigil.stopping.is_set():
            return None
        active = self._cache.get(name, max_age=ACTIVE_MODEL_MAX_AGE_S)
        if active is None or active.model.needs_history or active.model.schema != det.feature_schema:
            return None      # no model yet, sequence mode, or features changed: the score job sees to them
        with self._slots:
            batch = self._score_rows(name, active, records, numeric)
        return IngestScores(active.id, active.model.threshold.value, batch.scores, batch.outliers, batch.ood,
                            batch.suppressed)

    def _score_batch(self, name: str, active: ActiveModel, pending: list[PendingRecord]) -> list[ScoredRecord]:
        """Score a claimed batch of pending records."""
        return _scored_records(pending, self._score_rows(name, active, pending))

    def _score_rows(self, name: str, active: ActiveModel, pending: Sequence[ValidRecord | PendingRecord],
                    numeric: npt.NDArray[np.float64] | None = None) -> BatchScores:
        """Score a batch: one model call, then explanations for the flagged and unusual rows only."""
        det = self._vigil.detector(name)
        model = active.model
        context = model.needs_context
        history = None
        if model.needs_history:
            first: dict[str | None, datetime] = {}
            for record in pending:
                if record.key not in first or record.ts < first[record.key]:
                    first[record.key] = record.ts
            earlier = self._vigil.repo.history(name, first, model.scoring.window - 1)
            history = records_frame(earlier, det.feature_schema, context=True)
        frame = records_frame(pending, det.feature_schema, context=context, numeric=numeric)
        result = model.score(frame, history=history)
        unusual = result.unseen.any(axis=1)
        if result.rare is not None:
            unusual |= result.rare.any(axis=1)
        if result.new_key is not None:
            unusual |= result.new_key
        if result.out_of_range is not None:
            unusual |= result.out_of_range.any(axis=1)
        ood = {int(i): note for i in np.flatnonzero(unusual) if (note := result.out_of_distribution(int(i)))}
        flagged = self._outside_maintenance(name, pending, np.flatnonzero(result.is_outlier))
        flagged, suppressed = self._alert_hygiene(name, det.alerting, result, frame, pending, flagged)
        outliers = self._explain(result, pending, flagged, det.scoring.top_contributions)
        return BatchScores(result.scores.tolist(), outliers, ood, suppressed)

    def _windows(self, name: str) -> list[MaintenanceWindow]:
        """Every maintenance window of `name`, read from the store at most once per WINDOWS_MAX_AGE_S (at
        once after this process added or deleted one): flagged rows are checked against them per batch."""
        reviews = self._vigil.repo.reviews
        with self._lock:
            cached = self._window_cache.get(name)
        now = time.monotonic()
        if cached is not None and cached[1] == reviews.window_changes and now - cached[0] < WINDOWS_MAX_AGE_S:
            return cached[2]
        changes = reviews.window_changes
        windows = reviews.windows(name)
        with self._lock:
            self._window_cache[name] = (now, changes, windows)
        return windows

    def _outside_maintenance(self, name: str, pending: Sequence[ValidRecord | PendingRecord],
                             flagged: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        """The flagged rows whose time lies in no maintenance window of the detector."""
        if not len(flagged):
            return flagged
        times = [pending[i].ts for i in flagged]
        low, high = min(times), max(times)
        windows = [w for w in self._windows(name) if w.start <= high and w.end > low]
        if not windows:
            return flagged
        return np.asarray([int(i) for i, ts in zip(flagged, times, strict=True)
                           if not any(w.start <= ts < w.end for w in windows)], dtype=np.intp)

    def _alert_hygiene(self, name: str, alerting: AlertingConfig, result: ScoreResult, frame: pd.DataFrame,
                       pending: Sequence[ValidRecord | PendingRecord], flagged: npt.NDArray[np.intp],
                       ) -> tuple[npt.NDArray[np.intp], dict[int, str]]:
        """Drop the flagged rows whose top deviations are all within their floors, then those whose key has
        fewer than k of its last n records over the threshold; returns the rows kept and why each other
        row was dropped. Only the flagged rows and the rows of their keys are looked at."""
        suppressed: dict[int, str] = {}
        if len(flagged) and alerting.floors:
            quiet = within_floors(result, frame, flagged, alerting.floors, alerting.floor_top)
            suppressed.update(dict.fromkeys(flagged[quiet].tolist(), "deviation_floor"))
            flagged = flagged[~quiet]
        if len(flagged) and alerting.confirm_k > 1:
            keys = pd.Series([r.key for r in pending], dtype=object)
            rows = np.flatnonzero(keys.isin(keys.iloc[flagged].unique()).to_numpy())
            records = [pending[i] for i in rows]
            prior = self._vigil.repo.recent_exceedances(name, first_times(records), alerting.confirm_n - 1)
            ok = np.zeros(len(pending), dtype=bool)
            ok[rows] = confirmed(records, result.is_outlier[rows], prior, alerting.confirm_k, alerting.confirm_n)
            suppressed.update(dict.fromkeys(flagged[~ok[flagged]].tolist(), "confirmation"))
            flagged = flagged[ok[flagged]]
        return flagged, suppressed

    def _explain(self, result: ScoreResult, pending: Sequence[ValidRecord | PendingRecord],
                 flagged: npt.NDArray[np.intp], top_k: int) -> dict[int, dict[str, Any]]:
        """Contributions and expected values of the flagged rows, by row."""
        if not len(flagged):
            return {}
        rows = flagged.tolist()
        # ScoreResult.top_contributions for all these rows at once: one stable argsort, one division, and
        # the expected values converted column by column instead of through pandas row by row
        index = np.asarray(rows)
        contributions = result.contributions_at(index)      # these rows only: the rest are never computed
        scores = result.scores[index]
        order = np.argsort(-contributions, axis=1, kind="stable")[:, : max(top_k, 0)].tolist()
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            shares = (contributions / scores[:, np.newaxis]).tolist()
        names = result.feature_names
        expected_rows = result.expected_at(index)
        expected = _json_rows(expected_rows)
        explained: dict[int, dict[str, Any]] = {}
        for r, i in enumerate(rows):
            row, share, values, fields = contributions[r].tolist(), shares[r], expected[r], pending[i].fields
            positive = float(scores[r]) > 0
            explained[i] = {
                "contributions": [
                    {"feature": names[j], "contribution": _finite(row[j]),
                     "share": _finite(share[j]) if positive else 0.0,
                     "actual": to_json_value(fields.get(names[j])), "expected": values[j]}
                    for j in order[r]],
                "expected": dict(zip(expected_rows.columns, values, strict=True)),
            }
        return explained

    def score(self, name: str, max_batches: int = 20) -> int:
        """Score pending records of `name` until none are left (or `max_batches`); returns how many."""
        active = self._cache.get(name)
        if active is None:
            return 0
        det = self._vigil.detector(name)
        if active.model.schema != det.feature_schema:
            if name not in self.incompatible:
                logger.warning("the active model does not fit the detector's features: records wait for a new one",
                               extra={"detector": name, "version": active.version})
            self.incompatible.add(name)
            return 0
        self.incompatible.discard(name)
        metrics = self._vigil.metrics
        total = 0
        for _ in range(max_batches):
            if self._vigil.stopping.is_set():
                break
            with self._vigil.serialised(name), self._slots:
                started = time.perf_counter()
                scored = self._vigil.repo.score_pending(
                    name, det.scoring.batch_size, active.id, active.model.threshold.value,
                    lambda pending: self._score_batch(name, active, pending))
            if not scored:
                break
            _, scores, outliers, ood, suppressed = zip(*scored, strict=True)     # the columns, at C speed
            self._count(name, list(scores), _present(outliers), _present(ood), _present(suppressed),
                        active.model.threshold.value)
            metrics.scoring_duration.labels(name).observe(time.perf_counter() - started)
            total += len(scored)
            if len(scored) < det.scoring.batch_size:
                break
        if total:
            logger.info("scored", extra={"detector": name, "records": total, "model_version": active.version})
        return total

    def _count(self, name: str, scores: list[float], outliers: dict[int, Any], ood: dict[int, dict[str, Any]],
               suppressed: dict[int, str], threshold: float) -> None:
        """Scored records, outliers, suppressed alerts, out-of-distribution notes and the score/threshold histogram."""
        metrics = self._vigil.metrics
        metrics.records_scored.labels(name).inc(len(scores))
        if outliers:
            metrics.outliers.labels(name).inc(len(outliers))
        for reason, n in Counter(suppressed.values()).items():
            metrics.alerts_suppressed.labels(name, reason).inc(n)
        for note in ood.values():
            for kind, features in note.items():
                if features:
                    metrics.out_of_distribution.labels(name, kind).inc()
        metrics.observe_score_ratios(name, _ratios(scores, threshold))


def _scored_records(pending: Sequence[PendingRecord], batch: BatchScores) -> list[ScoredRecord]:
    """One ScoredRecord per pending record: id and score for all (a record with nothing but a score is the
    common case), then the few rows with an explanation, a note or a suppression replaced."""
    scored = list(itertools.starmap(ScoredRecord, zip([record.id for record in pending], batch.scores, strict=True)))
    outliers, ood, suppressed = batch.outliers, batch.ood, batch.suppressed
    for i in {*outliers, *ood, *suppressed}:
        scored[i] = ScoredRecord(scored[i].id, scored[i].score, outliers.get(i), ood.get(i), suppressed.get(i))
    return scored


def _present(column: Sequence[Any]) -> dict[int, Any]:
    """The values of a column that are not None, by row."""
    return {i: value for i, value in enumerate(column) if value is not None}


def _ratios(scores: Iterable[float], threshold: float) -> npt.NDArray[np.float64]:
    values = np.fromiter(scores, dtype=np.float64)
    if threshold > 0:
        return values / threshold
    return np.full(len(values), np.inf)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _json_rows(frame: pd.DataFrame) -> list[list[Any]]:
    """The frame's rows as lists of JSON-able Python values (NaN and infinities as None)."""
    if len(frame.columns) and all(dtype.kind in "fiu" for dtype in frame.dtypes):     # numbers only: one block
        block = frame.to_numpy(dtype=np.float64)
        rows: list[list[Any]] = block.tolist()
        finite = np.isfinite(block)
        if not finite.all():
            for i, j in zip(*np.nonzero(~finite), strict=True):
                rows[int(i)][int(j)] = None
        return rows
    columns = []
    for name in frame.columns:
        values = frame[name].tolist()
        columns.append([to_json_value(v) for v in values] if frame[name].dtype == object
                       else [v if not isinstance(v, float) or math.isfinite(v) else None for v in values])
    return [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in range(len(frame))]
