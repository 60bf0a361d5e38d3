"""Reading a Prometheus text exposition (what /metrics answers)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["metric", "metric_matching", "samples"]


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name`, in the order of the text."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels, float(sample.value)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly these labels, or None when absent."""
    return next((value for found, value in samples(text, name) if found == labels), None)


def metric_matching(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample `name` that has these labels (and maybe others), or None."""
    return next((value for found, value in samples(text, name) if labels.items() <= found.items()), None)
