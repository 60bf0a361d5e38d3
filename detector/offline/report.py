"""`vigil report`: one self-contained HTML page on a detector's active model, its scores and its outliers.

The page has no script and loads nothing (a Content-Security-Policy forbids it); its charts are
inline SVG from `detector.offline.svgplot`: training and validation loss, the recent score histogram with
the threshold, a 2-D map of the latent space with outliers marked, and the top outliers' inputs
next to the model's reconstruction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.config import Config, DetectorConfig
from detector.errors import NoActiveModelError, UnknownDetectorError
from detector.frames import records_frame
from detector.offline import svgplot
from detector.store.db import open_repository
from detector.store.repository import Repository
from detector.store.types import ModelVersion, OutlierView, PendingRecord
from training.fitted import FittedModel

__all__ = ["ReportData", "distinct_incidents", "gather", "latent_map", "render", "write_report"]

logger = logging.getLogger(__name__)

MAX_NORMAL_POINTS = 3000     # latent map: normal records drawn (evenly subsampled); outliers are all drawn
MAX_OUTLIER_POINTS = 500
INCIDENT_GAP = timedelta(hours=1)   # top outliers: one per key within this time of each other

_CSS = """
body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
.kv th{width:200px}.caption{font-size:13px;color:#444;max-width:900px}
.multiples{display:flex;flex-wrap:wrap;gap:12px}.multiple{border:1px solid #eee;padding:6px}
.warn{color:#a15c00}.fail{color:#b00020}
"""


@dataclass(frozen=True)
class ReportData:
    """What a report shows: the active model version (loaded), recent scores and top outliers."""

    detector: str
    source: str
    model: ModelVersion
    fitted: FittedModel
    recent: list[tuple[PendingRecord, float, bool]]
    top: list[OutlierView]
    generated_at: datetime


def gather(repo: Repository, name: str, det: DetectorConfig, records: int = 5000, top: int = 6) -> ReportData:
    """Load the active model of `name`, its newest `records` scores and its `top` outliers by score / threshold."""
    active = repo.active_model(name)
    if active is None or active.weights is None:
        raise NoActiveModelError(name)
    fitted = FittedModel.from_artifact(active.weights, active.meta)
    recent = repo.recent_scored(name, records, model_version_id=active.id)
    outliers = distinct_incidents(repo.top_outliers(name, active.id, top * 20), top)
    return ReportData(name, det.source.type, active, fitted, recent, outliers, datetime.now(UTC))


def distinct_incidents(outliers: Sequence[OutlierView], limit: int,
                       gap: timedelta = INCIDENT_GAP) -> list[OutlierView]:
    """Up to `limit` of `outliers` (best first), skipping any within `gap` of a chosen one of the same key,
    so that one long incident does not fill the page."""
    chosen: list[OutlierView] = []
    for o in outliers:
        if len(chosen) >= limit:
            break
        if not any(c.key == o.key and abs(c.ts - o.ts) < gap for c in chosen):
            chosen.append(o)
    return chosen


def latent_map(codes: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float64], tuple[str, str]]:
    """2-D coordinates [n, 2] of latent codes [n, latent] and their axis names.

    A 2-D code is drawn as it is; a wider one by its first two principal components (numpy SVD);
    a 1-D code against zero.
    """
    z = np.asarray(codes, dtype=np.float64)
    if z.shape[1] == 1:
        return np.column_stack([z[:, 0], np.zeros(len(z))]), ("latent 1", "(one-dimensional code)")
    if z.shape[1] == 2:
        return z, ("latent 1", "latent 2")
    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    share = s**2 / max(float(np.sum(s**2)), 1e-300)
    return centred @ vt[:2].T, (f"PC 1 ({100 * share[0]:.0f} % of variance)",
                                f"PC 2 ({100 * share[1]:.0f} % of variance)")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return escape(f"{value:.4g}")
    return escape("" if value is None else str(value))


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows) + \
        "</table>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _header(data: ReportData) -> str:
    meta, model = data.model.meta, data.model
    report: Mapping[str, Any] = meta.get("report") or {}
    threshold: Mapping[str, Any] = meta.get("threshold") or {}
    window: Mapping[str, Any] = meta.get("window") or {}
    spec: Mapping[str, Any] = meta.get("spec") or {}
    rows: list[tuple[str, Any]] = [
        ("detector", f"{data.detector} (source {data.source})"),
        ("model version", f"v{model.version}, {model.status}, trained {model.created_at.isoformat(timespec='seconds')}"
                          f" on {report.get('device', '?')}"),
        ("network", f"hidden {spec.get('hidden')}, latent {spec.get('latent')}, {spec.get('activation')}, "
                    f"loss {meta.get('loss')}" + (f", variant {spec['variant']}" if "variant" in spec else "")),
        ("threshold", f"{threshold.get('method')} {_num(threshold.get('value'))}: target false-positive rate "
                      f"{_pct(threshold.get('target_fpr'))}, expected outlier rate "
                      f"{_pct(threshold.get('expected_outlier_rate'))} (fitted on {threshold.get('n_holdout')}"
                      " held-out records)"),
        ("training window", f"{window.get('records', model.n_records)} records, {window.get('start', '?')} .. "
                            f"{window.get('end', '?')} (trigger {window.get('trigger', '?')})"),
        ("training run", f"{report.get('epochs_run')} epochs (best {report.get('best_epoch')}, stopped by "
                         f"{report.get('stop_reason')}), {_num(report.get('seconds'))} s; train loss "
                         f"{_num(report.get('train_loss'))}, validation loss {_num(report.get('val_loss'))}; "
                         f"{report.get('n_train')} train / {report.get('n_val')} validation rows"
                         + (f"; {report['trimmed_rows']} rows trimmed by a screening fit"
                            if report.get("trimmed_rows") else "")),
    ]
    if report.get("review_tuning"):
        tuning = report["review_tuning"]
        rows.append(("threshold tuned with reviews", ", ".join(f"{k}={_cell(v)}" for k, v in dict(tuning).items())))
    return f"<h1>Vigil report: {escape(data.detector)}</h1>" + _kv(rows) + _diversity(meta)


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "?"


def _pct(value: Any) -> str:
    return f"{100 * value:.2g} %" if isinstance(value, int | float) else "?"


def _diversity(meta: Mapping[str, Any]) -> str:
    diversity: Mapping[str, Any] = meta.get("diversity") or {}
    problems = [c for c in diversity.get("checks", []) if c.get("status") != "ok"]
    if not problems:
        status = diversity.get("status")
        return f"<p>Training-data checks: {escape(str(status)) if status else 'not recorded'}" + \
            (", no warnings.</p>" if status else ".</p>")
    rows = "".join(f'<li class="{escape(str(c.get("status")))}"><b>{escape(str(c.get("check")))}</b> '
                   f'({escape(str(c.get("status")))}): {escape(str(c.get("message", "")))}</li>' for c in problems)
    return f"<h2>Diversity warnings</h2><ul>{rows}</ul>"


def _loss_section(meta: Mapping[str, Any]) -> str:
    history = (meta.get("report") or {}).get("history") or []
    epochs = [float(h["epoch"]) for h in history]
    chart = svgplot.line_chart(
        {"training": (epochs, [float(h["train_loss"]) for h in history]),
         "validation": (epochs, [float(h["val_loss"]) for h in history])},
        title="Training and validation loss", x_label="epoch", y_label="loss (log scale)", log_y=True)
    seconds = sum(float(h.get("seconds") or 0.0) for h in history)
    caption = f"{len(history)} epochs, {seconds:.1f} s of training; the weights kept are the best validation epoch's."
    return _section("loss", "Training", chart, caption)


def _score_section(data: ReportData) -> str:
    scores = [s for _, s, _ in data.recent]
    threshold = data.fitted.threshold
    log = threshold.value > 0 and all(s > 0 for s in scores if math.isfinite(s))   # an ELBO may be negative
    chart = svgplot.histogram(scores, title="Scores of recent records", x_label="score (log scale)" if log else "score",
                              marker=threshold.value, marker_label="threshold", log_x=log)
    if not scores:
        return _section("scores", "Scores", chart, f"No record has been scored by v{data.model.version} yet.")
    above = sum(1 for _, _, flagged in data.recent if flagged)
    first, last = data.recent[0][0].ts, data.recent[-1][0].ts
    caption = (f"The newest {len(scores)} records scored by v{data.model.version} ({first.isoformat()} .. "
               f"{last.isoformat()}): {above} ({100 * above / len(scores):.2g} %) above the threshold "
               f"{threshold.value:.4g}; the threshold expects {100 * threshold.expected_outlier_rate:.2g} % of "
               "normal records above it.")
    return _section("scores", "Scores", chart, caption)


def _subsample(indices: npt.NDArray[np.intp], limit: int) -> npt.NDArray[np.intp]:
    if len(indices) <= limit:
        return indices
    return indices[np.linspace(0, len(indices) - 1, limit).round().astype(np.intp)]


def _latent_section(data: ReportData) -> str:
    flags = np.array([flagged for _, _, flagged in data.recent], dtype=bool)
    keep = np.concatenate([_subsample(np.flatnonzero(~flags), MAX_NORMAL_POINTS),
                           _subsample(np.flatnonzero(flags), MAX_OUTLIER_POINTS)])
    chosen = [data.recent[i] for i in keep]
    if not chosen:
        chart = svgplot.scatter({}, title="Latent space", x_label="", y_label="")
        return _section("latent", "Latent space", chart, "No scored records to place.")
    # sequence models, time features and per-key normal read times and keys
    frame = records_frame([r for r, _, _ in data.recent], data.fitted.schema, context=data.fitted.needs_context)
    codes = data.fitted.encode(frame)[keep]  # all encoded, so that a sequence model sees each record's neighbours
    xy, (x_label, y_label) = latent_map(codes)
    groups: dict[str, tuple[list[float], list[float]]] = {"normal": ([], []), "outlier": ([], [])}
    tips: dict[str, list[str]] = {"normal": [], "outlier": []}
    for (record, score, flagged), (a, b) in zip(chosen, xy.tolist(), strict=True):
        group = "outlier" if flagged else "normal"
        groups[group][0].append(a)
        groups[group][1].append(b)
        tips[group].append(f"{record.ts.isoformat()} {record.key or ''} score {score:.4g}")
    chart = svgplot.scatter(groups, title="Latent space of recent records", x_label=x_label, y_label=y_label,
                            highlight="outlier", labels=tips)
    how = ("the code itself" if codes.shape[1] == 2
           else f"the first two principal components of the {codes.shape[1]}-D code")
    caption = (f"{len(groups['normal'][0])} normal records and {len(groups['outlier'][0])} outliers (crosses) "
               f"among the recent scores, placed by {how}.")
    return _section("latent", "Latent space", chart, caption)


def _scaled(fitted: FittedModel, fields: Mapping[str, Any]) -> dict[str, float]:
    """Numeric features of one record in the model's input units (robust z-scores)."""
    frame = records_frame([PendingRecord(0, datetime.now(UTC), None, dict(fields))], fitted.schema)
    x = fitted.preprocessor.transform(frame)[0]
    return {f.name: float(x[fitted.preprocessor.feature_slices[f.name].start])
            for f in fitted.schema.features if f.kind == "numeric"}


def _outlier_panel(o: OutlierView, data: ReportData) -> str:
    share: dict[str, float] = {c["feature"]: float(c["share"]) for c in o.contributions
                               if isinstance(c.get("share"), int | float)}
    names = data.fitted.schema.names
    rows = [[n, o.fields.get(n), o.expected.get(n), f"{100 * share[n]:.0f} %" if n in share else ""]
            for n in sorted(names, key=lambda n: -share.get(n, 0.0))]
    ratio = o.score / o.threshold if o.threshold else math.inf
    title = f"#{o.id} {o.key or ''} {ratio:.3g}x threshold"
    try:
        actual, expected = _scaled(data.fitted, o.fields), _scaled(data.fitted, o.expected)
    except (KeyError, ValueError, TypeError):
        logger.warning("outlier cannot be encoded by the active model", extra={"outlier": o.id})
        chart = svgplot.grouped_bars([], {}, title=title, y_label="")
    else:
        order = [n for n, *_ in rows if n in actual]
        chart = svgplot.grouped_bars(order, {"actual": [actual[n] for n in order],
                                             "expected": [expected[n] for n in order]},
                                     title=title, y_label="model input units (symlog)", symlog=True)
    return (f'<div class="multiple">{chart}<p class="caption">{escape(o.ts.isoformat())}, '
            f"review: {escape(o.review_state)}</p>{_table(['feature', 'actual', 'expected', 'share'], rows)}</div>")


def _outlier_section(data: ReportData) -> str:
    if not data.top:
        return _section("reconstructions", "Top outliers", "", f"v{data.model.version} has flagged no record yet.")
    panels = "".join(_outlier_panel(o, data) for o in data.top)
    caption = (f"The {len(data.top)} outliers of v{data.model.version} furthest above the threshold (one per key "
               f"and {INCIDENT_GAP.total_seconds() / 3600:.0f} h): each record's "
               "numeric features next to the model's reconstruction, in the model's input units (median 0, "
               "robust standard deviation 1), and every feature with its share of the score.")
    return _section("reconstructions", "Top outliers and their reconstructions",
                    f'<div class="multiples">{panels}</div>', caption)


def _section(key: str, heading: str, body: str, caption: str) -> str:
    return (f'<section id="{key}" class="plot-section"><h2>{escape(heading)}</h2><figure>{body}'
            f'<figcaption class="caption">{escape(caption)}</figcaption></figure></section>')


def render(data: ReportData) -> str:
    """The whole HTML page (records are read with the model's own schema)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>Vigil report: {escape(data.detector)} v{data.model.version}</title><style>{_CSS}</style>"
            f"</head><body>{_header(data)}{_loss_section(data.model.meta)}{_score_section(data)}"
            f"{_latent_section(data)}{_outlier_section(data)}"
            f"<p class=\"caption\">Generated {escape(data.generated_at.isoformat(timespec='seconds'))} by "
            "<code>vigil report</code>.</p></body></html>\n")


def write_report(config: Config, name: str, output: Path, records: int = 5000, top: int = 6) -> ReportData:
    """Gather and render the report of detector `name` into `output`."""
    if name not in config.detectors:
        raise UnknownDetectorError(name, list(config.detectors))
    det = config.detectors[name]
    repo = open_repository(config.store_url)
    try:
        data = gather(repo, name, det, records, top)
    finally:
        repo.dispose()
    output.write_text(render(data), encoding="utf-8")
    return data
