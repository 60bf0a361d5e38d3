"""Review commands: `vigil outliers show/review/export` and `vigil maintenance add/list/remove`."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from detector.cli_common import config_option, load, short, table
from detector.errors import VigilError
from detector.records import parse_timestamp

__all__ = ["maintenance", "outliers_export", "outliers_review", "outliers_show"]


def _reviews(config_path: Path) -> Any:
    from detector.store.db import open_repository

    return open_repository(load(config_path).store_url).reviews


def _time(value: str, option: str) -> datetime:
    try:
        return parse_timestamp(value, datetime.now().astimezone())
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time or Unix seconds ({exc})",
                                 param_hint=option) from None


@click.command("show")
@click.argument("outlier_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def outliers_show(outlier_id: int, as_json: bool, config_path: Path) -> None:
    """One outlier: the record, its score against the threshold, and the features ranked by contribution."""
    detail = _reviews(config_path).detail(outlier_id, around=0)
    if detail is None:
        raise VigilError(f"no outlier {outlier_id}")
    o = detail.outlier
    if as_json:
        from detector.api_review import outlier_json

        click.echo(json.dumps({**outlier_json(o), "model": detail.model,
                               "review": {"note": detail.review_note, "reviewer": detail.reviewer}}, indent=2))
        return
    ratio = o.score / o.threshold if o.threshold else float("inf")
    lines = [
        f"outlier {o.id} of {o.detector}, key {o.key or '-'}, at {o.ts.isoformat()}",
        f"score {short(o.score)} against threshold {short(o.threshold)} ({ratio:.1f}x), model v{o.model_version} "
        f"trained {detail.model['trained_at'][:19]} on {detail.model['window_records']} records",
        f"review: {o.review_state}" + (f" by {detail.reviewer}" if detail.reviewer else "")
        + (f": {detail.review_note}" if detail.review_note else ""),
    ]
    if o.ood:
        unseen = ", ".join(o.ood.get("unseen_category", []))
        far = ", ".join(o.ood.get("out_of_range", []))
        lines.append("out of distribution: " + "; ".join(
            part for part in (f"unseen category in {unseen}" if unseen else "",
                              f"far outside the training range: {far}" if far else "") if part))
    click.echo("\n".join(lines) + "\n\n" + _feature_table(o.contributions, o.fields, o.expected))
    features = {*o.expected, *(c["feature"] for c in o.contributions)}
    others = {k: v for k, v in o.fields.items() if k not in features}
    if others:
        click.echo("\nother fields: " + ", ".join(f"{k}={short(v)}" for k, v in others.items()))


def _feature_table(contributions: list[dict[str, Any]], fields: dict[str, Any], expected: dict[str, Any]) -> str:
    """Every feature, the explained ones first by contribution, with actual and expected (reconstructed) values."""
    explained = {c["feature"]: c for c in contributions}
    rows = [[name, short(c.get("actual", fields.get(name))), short(c.get("expected", expected.get(name))),
             short(c.get("contribution")), f"{100 * (c.get('share') or 0):.0f}%"] for name, c in explained.items()]
    rows += [[name, short(fields.get(name)), short(value), "", ""]
             for name, value in expected.items() if name not in explained]
    text = table(["feature", "actual", "expected", "contribution", "share of score"], rows)
    if len(explained) < len(rows):
        text += (f"\n(contributions are stored for the top {len(explained)} features; "
                 "scoring.top_contributions sets how many)")
    return text


@click.command("review")
@click.argument("outlier_ids", type=int, nargs=-1, required=True)
@click.option("--confirm", "verdict", flag_value="confirmed", help="A real anomaly.")
@click.option("--dismiss", "verdict", flag_value="dismissed", help="A false alarm: train on it as normal.")
@click.option("--note", help="Why.")
@click.option("--reviewer", help="Who (default: the login name).")
@config_option
def outliers_review(outlier_ids: tuple[int, ...], verdict: str | None, note: str | None, reviewer: str | None,
                    config_path: Path) -> None:
    """Confirm or dismiss one or more outliers."""
    import getpass

    if verdict is None:
        raise click.UsageError("give --confirm or --dismiss")
    updated, missing = _reviews(config_path).set_verdict(list(outlier_ids), verdict, note,
                                                         reviewer or getpass.getuser())
    click.echo(f"{verdict}: {', '.join(str(i) for i, _ in updated) or 'none'}")
    if missing:
        click.echo(f"no such outlier: {', '.join(map(str, missing))}", err=True)
        sys.exit(1)


@click.command("export")
@click.option("--detector", "-d", help="Only this detector.")
@click.option("--review-state", type=click.Choice(["unreviewed", "confirmed", "dismissed"]))
@click.option("--since", help="From this time (ISO 8601).")
@click.option("--until", help="Before this time (ISO 8601).")
@click.option("--limit", "-n", default=10_000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
@config_option
def outliers_export(detector: str | None, review_state: str | None, since: str | None, until: str | None,
                    limit: int, output: Path | None, config_path: Path) -> None:
    """Outliers as CSV (the same columns as GET /v1/outliers.csv)."""
    from detector.api_review import outliers_csv
    from detector.store.reviews import OutlierFilter

    f = OutlierFilter(detector=detector, review_state=review_state,
                      since=_time(since, "--since") if since else None,
                      until=_time(until, "--until") if until else None)
    rows, _ = _reviews(config_path).query(f, limit, 0, "ts", True)
    text = outliers_csv(rows)
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"{len(rows)} outliers written to {output}", err=True)
    else:
        click.echo(text, nl=False)


@click.group()
def maintenance() -> None:
    """Maintenance windows: time ranges whose records are neither flagged nor trained on."""


@maintenance.command("add")
@click.argument("detector")
@click.option("--start", required=True, help="ISO 8601 time (a time without zone is UTC).")
@click.option("--end", required=True, help="ISO 8601 time.")
@click.option("--reason", help="What is going on.")
@config_option
def maintenance_add(detector: str, start: str, end: str, reason: str | None, config_path: Path) -> None:
    """Declare a maintenance window for DETECTOR."""
    config = load(config_path)
    if detector not in config.detectors:
        raise click.BadParameter(f"unknown detector {detector!r}", param_hint="DETECTOR")
    try:
        window = _reviews(config_path).add_window(detector, _time(start, "--start"), _time(end, "--end"), reason)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"maintenance window {window.id}: {window.start.isoformat()} .. {window.end.isoformat()}")


@maintenance.command("list")
@click.argument("detector")
@config_option
def maintenance_list(detector: str, config_path: Path) -> None:
    """The maintenance windows of DETECTOR."""
    windows = _reviews(config_path).windows(detector)
    rows = [[w.id, w.start.isoformat(), w.end.isoformat(), w.reason or ""] for w in windows]
    click.echo(table(["id", "start", "end", "reason"], rows) if rows else "no maintenance windows")


@maintenance.command("remove")
@click.argument("detector")
@click.argument("window_id", type=int)
@config_option
def maintenance_remove(detector: str, window_id: int, config_path: Path) -> None:
    """Remove maintenance window WINDOW_ID of DETECTOR."""
    if not _reviews(config_path).delete_window(detector, window_id):
        raise VigilError(f"detector {detector!r} has no maintenance window {window_id}")
    click.echo(f"removed maintenance window {window_id}")
