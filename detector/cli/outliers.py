"""`vigil outliers list/show/review/export`: flagged outliers, through the review service."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from detector.cli.common import (
    DetectorGroup,
    config_option,
    known_detector,
    load,
    parse_time,
    review_service,
    short,
    table,
)
from detector.review import outlier_json

__all__ = ["outliers"]


OTHER_FIELDS_SHOWN = 50     # `outliers show`: extra (non-feature) fields listed; --json gives them all


@click.group(cls=DetectorGroup)
def outliers() -> None:
    """Flagged outliers."""


@outliers.command("list")
@config_option
@click.option("--detector", "-d", help="Only this detector.")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def outliers_list(config_path: Path, detector: str | None, limit: int, as_json: bool) -> None:
    """Newest outliers: time, key, score against threshold, and the top contributing features."""
    from detector.store.db import open_repository

    config = load(config_path)
    if detector is not None:
        known_detector(config.detectors, detector)
    rows = open_repository(config.store_url).list_outliers(detector, None, limit)
    if as_json:
        for o in rows:
            click.echo(json.dumps({"id": o.id, "detector": o.detector, "ts": o.ts.isoformat(), "key": o.key,
                                   "score": o.score, "threshold": o.threshold,
                                   "model_version": o.model_version, "contributions": o.contributions,
                                   "expected": o.expected, "fields": o.fields}))
        return
    cells = []
    for o in rows:
        top = ", ".join(
            f"{c['feature']}={short(c['actual'])} (exp {short(c['expected'])})" for c in o.contributions[:3])
        cells.append([o.id, o.detector, o.ts.strftime("%Y-%m-%d %H:%M:%S"), o.key,
                      f"{o.score / o.threshold:.1f}x" if o.threshold else o.score, f"v{o.model_version}",
                      o.fields.get("incident", "") if "incident" in o.fields else "", top])
    headers = ["id", "detector", "ts", "key", "score/thr", "model", "incident", "top features"]
    if not any(r[6] for r in cells):
        headers.pop(6)
        cells = [r[:6] + r[7:] for r in cells]
    click.echo(table(headers, cells) if cells else "no outliers yet")


@outliers.command("show")
@click.argument("outlier_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def outliers_show(outlier_id: int, as_json: bool, config_path: Path) -> None:
    """One outlier: the record, its score against the threshold, and the features ranked by contribution."""
    detail = review_service(config_path).detail(outlier_id, around=0)
    o = detail.outlier
    if as_json:
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
        rare = ", ".join(o.ood.get("rare_category", []))
        far = ", ".join(o.ood.get("out_of_range", []))
        lines.append("out of distribution: " + "; ".join(
            part for part in (f"unseen category in {unseen}" if unseen else "",
                              f"category seen in under 0.1 % of the training records: {rare}" if rare else "",
                              f"far outside the training range: {far}" if far else "",
                              "a key the per-key model has not learned yet" if o.ood.get("new_key") else "")
                          if part))
    click.echo("\n".join(lines) + "\n\n" + _feature_table(o.contributions, o.fields, o.expected))
    features = {*o.expected, *(c["feature"] for c in o.contributions)}
    others = {k: v for k, v in o.fields.items() if k not in features}
    if others:
        shown = list(others.items())[:OTHER_FIELDS_SHOWN]
        more = len(others) - len(shown)
        click.echo("\nother fields: " + ", ".join(f"{k}={short(v)}" for k, v in shown)
                   + (f" ... and {more} more (--json shows them all)" if more else ""))


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


@outliers.command("review")
@click.argument("outlier_ids", type=int, nargs=-1, required=True)
@click.option("--confirm", is_flag=True, help="A real anomaly.")
@click.option("--dismiss", is_flag=True, help="A false alarm: train on it as normal.")
@click.option("--unreview", is_flag=True,
              help="Take the verdict back: clears reviewer, time and note (unless --note gives one).")
@click.option("--note", help="Why.")
@click.option("--reviewer", help="Who (default: the login name).")
@config_option
def outliers_review(outlier_ids: tuple[int, ...], confirm: bool, dismiss: bool, unreview: bool, note: str | None,
                    reviewer: str | None, config_path: Path) -> None:
    """Confirm or dismiss one or more outliers, or take their verdicts back (--unreview)."""
    import getpass

    given = [v for v, on in (("confirmed", confirm), ("dismissed", dismiss), ("unreviewed", unreview)) if on]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --confirm, --dismiss or --unreview"
                               + (f" (got {len(given)})" if given else ""))
    verdict = given[0]
    who = None if verdict == "unreviewed" else reviewer or getpass.getuser()
    result = review_service(config_path).set_verdict(list(outlier_ids), verdict, note, who)
    click.echo(f"{verdict}: {', '.join(str(i) for i in result.updated) or 'none'}")
    if result.missing:
        click.echo(f"no such outlier: {', '.join(map(str, result.missing))}", err=True)
        sys.exit(1)


@outliers.command("export")
@click.option("--detector", "-d", help="Only this detector.")
@click.option("--review-state", type=click.Choice(["unreviewed", "confirmed", "dismissed"]))
@click.option("--since", help="From this time (ISO 8601).")
@click.option("--until", help="Before this time (ISO 8601).")
@click.option("--limit", "-n", default=10_000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="At most this many (the newest); stderr says when more match.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
@config_option
def outliers_export(detector: str | None, review_state: str | None, since: str | None, until: str | None,
                    limit: int, output: Path | None, config_path: Path) -> None:
    """Outliers as CSV, newest first (the same columns as GET /v1/outliers.csv), read and written a page at a
    time; text a spreadsheet would run as a formula starts with ' (see README)."""
    from detector.store.types import OutlierFilter

    service = review_service(config_path)
    if detector is not None:
        service.check_detector(detector)
    f = OutlierFilter(detector=detector, review_state=review_state,
                      since=parse_time(since, "--since") if since else None,
                      until=parse_time(until, "--until") if until else None)
    export = service.export(f, limit)
    if output:
        partial = output.with_name(f".{output.name}.partial")    # the file appears whole, or not at all
        try:
            with partial.open("w", encoding="utf-8", newline="") as fh:
                for chunk in export:
                    fh.write(chunk)
            os.replace(partial, output)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        click.echo(f"{export.written} outliers written to {output}", err=True)
    else:
        for chunk in export:
            click.echo(chunk, nl=False)
    if export.more:
        click.echo(f"vigil: stopped at --limit {limit}: {service.count(f)} outliers match; raise --limit or "
                   "narrow the filters (--since, --until, -d, --review-state) for the rest", err=True)
