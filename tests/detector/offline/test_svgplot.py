"""The SVG charts: well-formed XML, one mark per data item, escaped text, no data -> a note instead of marks."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET

import pytest

from detector.offline import svgplot

SVG = "{http://www.w3.org/2000/svg}"
NASTY = '<script>alert("x")</script> & \'quotes\''


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)                  # raises on anything not well-formed
    assert root.tag == f"{SVG}svg"
    return root


def marks(root: ET.Element, kind: str) -> list[ET.Element]:
    return [e for e in root.iter() if kind in (e.get("class") or "").split() and "mark" in (e.get("class") or "")]


def texts(root: ET.Element) -> list[str]:
    return [e.text or "" for e in root.iter() if e.tag in (f"{SVG}text", f"{SVG}title")]


@pytest.mark.parametrize(("low", "high"), [(0, 1), (-3.2, 17), (0.0012, 0.0049), (1e5, 3.5e6), (-1, -0.5)])
def test_nice_ticks_are_round_and_cover_the_range(low: float, high: float) -> None:
    ticks = svgplot.nice_ticks(low, high)
    assert 3 <= len(ticks) <= 11
    assert all(low - 1e-12 <= t <= high + 1e-12 for t in ticks)
    steps = {round(b - a, 12) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1, 2, 5)


def test_line_chart_draws_one_line_per_series_and_skips_non_finite_points() -> None:
    root = parse(svgplot.line_chart(
        {"training": ([1, 2, 3, 4], [1.0, 0.5, math.nan, 0.2]), "validation": ([1, 2, 3, 4], [1.2, 0.7, 0.5, 0.4])},
        title="Loss", x_label="epoch", y_label="loss", log_y=True))
    lines = marks(root, "line")
    assert [line.get("data-series") for line in lines] == ["training", "validation"]
    assert [len((line.get("points") or "").split()) for line in lines] == [3, 4]
    for line in lines:
        for point in (line.get("points") or "").split():
            x, y = map(float, point.split(","))
            assert 0 <= x <= 640 and 0 <= y <= 320
    assert {"training", "validation", "epoch", "loss"} <= set(texts(root))


def test_log_scale_puts_larger_values_higher() -> None:
    root = parse(svgplot.line_chart({"s": ([1, 2], [0.01, 10.0])}, title="t", x_label="x", y_label="y", log_y=True))
    (first, second) = [tuple(map(float, p.split(","))) for p in (marks(root, "line")[0].get("points") or "").split()]
    assert second[1] < first[1]


def test_histogram_counts_every_value_once_and_draws_the_threshold() -> None:
    values = [0.1 * (i % 50 + 1) for i in range(1000)] + [math.inf, math.nan, -1.0]
    root = parse(svgplot.histogram(values, title="Scores", x_label="score", bins=20, marker=4.2,
                                   marker_label="threshold", log_x=True))
    bars = marks(root, "bar")
    counts = [int((b.find(f"{SVG}title").text or "").rsplit(": ", 1)[1]) for b in bars]  # type: ignore[union-attr]
    assert sum(counts) == 1000, "non-finite and non-positive values are left out on a log axis"
    assert 1 <= len(bars) <= 20
    [line] = [e for e in root.iter() if e.get("class") == "threshold"]
    assert "threshold" in texts(root)
    x = float(line.get("x1") or 0)
    assert 64 < x < 640 - 16


def test_scatter_draws_outliers_as_crosses_on_top() -> None:
    root = parse(svgplot.scatter({"normal": ([0, 1, 2, math.nan], [0, 1, 2, 3]), "outlier": ([5, 6], [5, 6])},
                                 title="Latent", x_label="PC 1", y_label="PC 2", highlight="outlier",
                                 labels={"normal": ["a", "b", "c", "d"], "outlier": [NASTY, "f"]}))
    points = marks(root, "point")
    assert len(points) == 5
    outliers = [p for p in points if "outlier" in (p.get("class") or "")]
    assert [p.tag for p in outliers] == [f"{SVG}path", f"{SVG}path"]
    assert points[-2:] == outliers, "drawn last, so they stay visible"
    assert NASTY in texts(root)


def test_grouped_bars_one_bar_per_present_value() -> None:
    root = parse(svgplot.grouped_bars(["cpu", "p99_latency_ms", "memory"],
                                      {"actual": [3.0, -2.0, 0.5], "expected": [0.2, None, math.inf]},
                                      title="#12 web-1", y_label="scaled"))
    bars = marks(root, "bar")
    assert [b.get("data-series") for b in bars] == ["actual", "actual", "actual", "expected"]
    heights = [float(b.get("height") or 0) for b in bars]
    assert heights[0] > heights[2] > 0


def test_text_is_escaped_everywhere() -> None:
    charts = [
        svgplot.line_chart({NASTY: ([1], [1])}, title=NASTY, x_label=NASTY, y_label=NASTY),
        svgplot.histogram([1, 2], title=NASTY, x_label=NASTY, marker=1.5, marker_label=NASTY),
        svgplot.scatter({NASTY: ([1], [1])}, title=NASTY, x_label=NASTY, y_label=NASTY, highlight=NASTY),
        svgplot.grouped_bars([NASTY], {NASTY: [1.0]}, title=NASTY, y_label=NASTY),
    ]
    for svg in charts:
        assert "<script" not in svg
        root = parse(svg)
        assert NASTY in texts(root)
        assert not [e for e in root.iter() if e.tag.endswith("script")]


def test_no_data_gives_a_note_and_no_marks() -> None:
    for svg in (svgplot.line_chart({"a": ([], [])}, title="t", x_label="x", y_label="y"),
                svgplot.histogram([math.nan], title="t", x_label="x"),
                svgplot.scatter({}, title="t", x_label="x", y_label="y"),
                svgplot.grouped_bars([], {}, title="t", y_label="y")):
        root = parse(svg)
        assert [e for e in root.iter() if "mark" in (e.get("class") or "")] == []
        assert "no data" in texts(root)


def test_constant_values_still_draw() -> None:
    root = parse(svgplot.histogram([2.0] * 10, title="t", x_label="x", marker=2.0))
    assert sum(int((b.find(f"{SVG}title").text or "").rsplit(": ", 1)[1])  # type: ignore[union-attr]
               for b in marks(root, "bar")) == 10


def test_log_x_with_given_ticks_spaces_doublings_evenly() -> None:
    sizes = [2, 4, 8, 16, 32]
    root = parse(svgplot.line_chart({"a": (sizes, [50, 40, 30, 20, 10])}, title="t", x_label="latent size", y_label="y",
                                    log_x=True, x_ticks=sizes))
    xs = [float(p.split(",")[0]) for p in (marks(root, "line")[0].get("points") or "").split()]
    gaps = {round(b - a, 1) for a, b in itertools.pairwise(xs)}
    assert len(gaps) == 1, xs
    assert [t for t in texts(root) if t in {"2", "4", "8", "16", "32"}] == ["2", "4", "8", "16", "32"]
