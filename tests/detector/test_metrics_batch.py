"""Metrics.observe_score_ratios: a batch added at once reads exactly as one observe() per value."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from detector.metrics import SCORE_RATIO_BUCKETS, Metrics


@pytest.mark.parametrize("values", [
    [],
    [0.05, 0.1, 0.1000001, 0.7, 1.0, 1.0000001, 99.0, 100.0, 100.5, float("inf"), 0.0, -3.0],
    [float("nan"), 0.5, float("nan")],
    list(np.random.default_rng(0).lognormal(0.0, 1.5, 2000)),
])
def test_a_batch_reads_as_one_observe_per_value(values: list[float]) -> None:
    batched, one_by_one = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    batched.observe_score_ratios("web", np.asarray(values, dtype=np.float64))
    batched.observe_score_ratios("web", np.asarray(values[:3], dtype=np.float64))
    child = one_by_one.score_ratio.labels("web")
    for value in [*values, *values[:3]]:
        child.observe(value)

    def samples(m: Metrics) -> dict[str, float]:
        family = next(f for f in m.registry.collect() if f.name == "vigil_score_threshold_ratio")
        return {f"{s.name}{sorted(s.labels.items())}": s.value for s in family.samples
                if not s.name.endswith("_created")}

    got, want = samples(batched), samples(one_by_one)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, nan_ok=True, rel=1e-12), name
    count = got["vigil_score_threshold_ratio_count[('detector', 'web')]"]
    assert count == sum(1 for v in [*values, *values[:3]] if v == v)        # NaN counts in the sum only
    assert len(SCORE_RATIO_BUCKETS) + 1 == sum(1 for n in got if n.startswith("vigil_score_threshold_ratio_bucket"))
    assert b"vigil_score_threshold_ratio_bucket" in generate_latest(batched.registry)


@pytest.mark.parametrize("values", [
    [0.05, 0.1, 0.1000001, 0.7, 1.0, 1.0000001, 99.0, 100.0, 100.5, float("inf"), 0.0, -3.0, float("nan")],
    list(np.random.default_rng(1).lognormal(0.0, 1.5, 500)),
])
def test_the_batch_histogram_reads_as_prometheus_clients_own(values: list[float]) -> None:
    """The exposition of BatchHistogram equals that of prometheus_client's Histogram fed one value at a time."""
    from prometheus_client import Histogram

    ours, reference = Metrics(CollectorRegistry()), CollectorRegistry()
    ours.observe_score_ratios("web", np.asarray(values, dtype=np.float64))
    theirs = Histogram("vigil_score_threshold_ratio", "Score of each scored record divided by the threshold in force.",
                       ["detector"], buckets=SCORE_RATIO_BUCKETS, registry=reference)
    for value in values:
        theirs.labels("web").observe(value)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if line.startswith("vigil_score_threshold_ratio")
                and "_created" not in line and "_sum" not in line]

    assert lines(ours.registry) == lines(reference)
    total = next(s.value for f in ours.registry.collect() for s in f.samples if s.name.endswith("_sum"))
    want = next(s.value for f in reference.collect() for s in f.samples if s.name.endswith("_sum"))
    assert total == pytest.approx(want, nan_ok=True, rel=1e-12)
