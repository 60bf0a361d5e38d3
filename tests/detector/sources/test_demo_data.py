"""Tests for the deterministic synthetic demo data generator."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from detector.sources.demo_data import (
    INCIDENT_KINDS,
    REGIONS,
    DemoRecord,
    DemoSettings,
    generate,
    incident_windows,
)

START = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
NUMERIC = ("request_rate", "p50_latency_ms", "p99_latency_ms", "error_rate", "cpu_pct", "memory_pct")


@pytest.fixture(scope="module")
def week() -> list[DemoRecord]:
    return generate(START, START + timedelta(days=7), DemoSettings())


@pytest.fixture(scope="module")
def month() -> list[DemoRecord]:
    return generate(START, START + timedelta(days=30), DemoSettings())


def _by_host(records: list[DemoRecord], *, normal_only: bool = False) -> dict[str, list[DemoRecord]]:
    out: dict[str, list[DemoRecord]] = {}
    for r in records:
        if normal_only and r.incident is not None:
            continue
        out.setdefault(r.key, []).append(r)
    return out


def _col(records: list[DemoRecord], name: str) -> np.ndarray:
    return np.array([float(r.fields[name]) for r in records])


# --- determinism and time axis -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings", [DemoSettings(), DemoSettings(hosts=3, step_s=7, seed=11, incident_rate=0.1)]
)
def test_split_property_random_cuts(settings: DemoSettings) -> None:
    rnd = random.Random(1234)
    span_s = 3 * 86_400 if settings.step_s == 60 else 4 * 3600
    a = START - timedelta(seconds=1000, microseconds=17)  # not aligned, crosses a block boundary
    c = a + timedelta(seconds=span_s)
    whole = generate(a, c, settings)
    assert whole
    for _ in range(6):
        cuts = sorted(rnd.uniform(0, span_s) for _ in range(rnd.randint(1, 3)))
        points = [a, *(a + timedelta(seconds=x) for x in cuts), c]
        pieces: list[DemoRecord] = []
        for lo, hi in itertools.pairwise(points):
            pieces.extend(generate(lo, hi, settings))
        assert pieces == whole


def test_split_at_aligned_cut_and_empty_ranges() -> None:
    s = DemoSettings()
    b = START + timedelta(hours=23, minutes=59)
    c = START + timedelta(days=1, minutes=30)
    assert generate(START, b, s) + generate(b, c, s) == generate(START, c, s)
    assert generate(b, b, s) == []
    assert generate(c, b, s) == []
    # less than one step wide and not containing a multiple of step_s
    assert generate(START + timedelta(seconds=1), START + timedelta(seconds=59), s) == []


def test_repeated_calls_are_identical_and_seeds_differ() -> None:
    end = START + timedelta(hours=6)
    first = generate(START, end, DemoSettings(seed=7))
    assert first == generate(START, end, DemoSettings(seed=7))
    other = generate(START, end, DemoSettings(seed=8))
    assert len(other) == len(first)
    assert _col(first, "request_rate").tolist() != _col(other, "request_rate").tolist()
    assert incident_windows(START, START + timedelta(days=7), DemoSettings(seed=7)) != incident_windows(
        START, START + timedelta(days=7), DemoSettings(seed=8)
    )


def test_host_data_independent_of_host_count() -> None:
    end = START + timedelta(days=2)
    two = generate(START, end, DemoSettings(hosts=2))
    four = generate(START, end, DemoSettings(hosts=4))
    assert two == [r for r in four if r.key in ("web-1", "web-2")]
    windows_four = incident_windows(START, end, DemoSettings(hosts=4))
    assert incident_windows(START, end, DemoSettings(hosts=2)) == [
        w for w in windows_four if w[0] in ("web-1", "web-2")
    ]


def test_timestamps_aligned_ordered_utc() -> None:
    s = DemoSettings(hosts=5, step_s=90)
    start = START + timedelta(seconds=13, microseconds=5)
    end = start + timedelta(hours=5)
    records = generate(start, end, s)
    hosts = [f"web-{i}" for i in range(1, 6)]
    assert len(records) % 5 == 0
    first_expected = START + timedelta(seconds=90)
    assert records[0].ts == first_expected
    for i, r in enumerate(records):
        assert r.ts.tzinfo is not None
        assert r.ts.utcoffset() == timedelta(0)
        assert start <= r.ts < end
        assert int(r.ts.timestamp()) % 90 == 0
        assert r.ts.microsecond == 0
        assert r.key == hosts[i % 5]
        assert r.ts == first_expected + timedelta(seconds=90 * (i // 5))
    assert records[-1].ts + timedelta(seconds=90) >= end


def test_non_utc_input_accepted_and_naive_rejected() -> None:
    s = DemoSettings()
    plus2 = timezone(timedelta(hours=2))
    local = generate(datetime(2025, 3, 3, 2, 0, tzinfo=plus2), datetime(2025, 3, 3, 3, 0, tzinfo=plus2), s)
    assert local == generate(START, START + timedelta(hours=1), s)
    assert all(r.ts.tzinfo is UTC for r in local)
    with pytest.raises(ValueError, match="timezone-aware"):
        generate(datetime(2025, 3, 3), START, s)
    with pytest.raises(ValueError, match="timezone-aware"):
        incident_windows(START, datetime(2025, 3, 4), s)


def test_before_epoch_works_and_splits() -> None:
    s = DemoSettings(hosts=2)
    a = datetime(1969, 12, 31, 12, tzinfo=UTC)
    b = datetime(1970, 1, 1, 0, 0, 30, tzinfo=UTC)
    c = datetime(1970, 1, 1, 12, tzinfo=UTC)
    whole = generate(a, c, s)
    assert len(whole) == 2 * 24 * 60
    assert generate(a, b, s) + generate(b, c, s) == whole


@pytest.mark.parametrize(
    "kwargs",
    [{"hosts": 0}, {"step_s": 0}, {"seed": -1}, {"incident_rate": -0.01}, {"incident_rate": 1.5}],
)
def test_settings_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DemoSettings(**kwargs)  # type: ignore[arg-type]


# --- normal behaviour -----------------------------------------------------------------------------------


def test_field_names_and_ranges(month: list[DemoRecord]) -> None:
    for r in month:
        assert set(r.fields) == {*NUMERIC, "region", "status_class"}
        assert r.incident is None or r.incident in INCIDENT_KINDS
    err = _col(month, "error_rate")
    cpu = _col(month, "cpu_pct")
    mem = _col(month, "memory_pct")
    p50 = _col(month, "p50_latency_ms")
    p99 = _col(month, "p99_latency_ms")
    rate = _col(month, "request_rate")
    assert np.all((err >= 0) & (err <= 1))
    assert np.all((cpu >= 0) & (cpu <= 100))
    assert np.all((mem >= 0) & (mem <= 100))
    assert np.all(p50 > 0)
    assert np.all(p99 >= p50)
    assert np.all(rate > 0)
    assert {r.fields["region"] for r in month} <= set(REGIONS)
    assert {r.fields["status_class"] for r in month} <= {"2xx", "3xx", "5xx"}


def test_hosts_and_regions_fixed(week: list[DemoRecord]) -> None:
    by_host = _by_host(week, normal_only=True)
    assert sorted(by_host) == ["web-1", "web-2", "web-3", "web-4"]
    regions = {host: {r.fields["region"] for r in recs} for host, recs in by_host.items()}
    assert all(len(v) == 1 for v in regions.values())
    assert len(set().union(*regions.values())) >= 2


def test_normal_cpu_follows_load_and_latency_shape(week: list[DemoRecord]) -> None:
    for host, recs in _by_host(week, normal_only=True).items():
        rate = _col(recs, "request_rate")
        cpu = _col(recs, "cpu_pct")
        p50 = _col(recs, "p50_latency_ms")
        p99 = _col(recs, "p99_latency_ms")
        err = _col(recs, "error_rate")
        assert np.corrcoef(rate, cpu)[0, 1] > 0.8, host
        assert np.corrcoef(rate, p50)[0, 1] > 0.2, host  # latency rises mildly with load
        ratio = p99 / p50
        assert np.all((ratio >= 2.45) & (ratio <= 4.05)), host
        assert 0.0008 < float(np.median(err)) < 0.005, host
        assert float(np.max(err)) < 0.02, host
        assert float(np.std(cpu)) > 10, host  # the daily cycle is visible
        status = Counter(r.fields["status_class"] for r in recs)
        assert set(status) == {"2xx", "3xx"}, host
        assert 0.001 < status["3xx"] / len(recs) < 0.01, host


def test_daily_and_weekly_cycle(week: list[DemoRecord]) -> None:
    for host, recs in _by_host(week, normal_only=True).items():
        weekday = [r for r in recs if r.ts.weekday() < 5]
        weekend = [r for r in recs if r.ts.weekday() >= 5]
        ratio = _col(weekend, "request_rate").mean() / _col(weekday, "request_rate").mean()
        assert 0.6 < ratio < 0.8, host
        noon = _col([r for r in weekday if 11 <= r.ts.hour < 13], "request_rate").mean()
        night = _col([r for r in weekday if r.ts.hour in (23, 0)], "request_rate").mean()
        assert noon > 2.5 * night, host


def test_noise_is_not_constant_and_not_white_only(week: list[DemoRecord]) -> None:
    recs = _by_host(week)["web-1"][:1440]
    cpu = _col(recs, "cpu_pct")
    steps = np.diff(cpu)
    assert np.count_nonzero(steps) > 1400
    mem = _col(recs, "memory_pct")
    assert 1.0 < float(np.std(mem)) < 10.0


# --- incidents ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.02, 0.06])
def test_incident_share_near_rate(rate: float) -> None:
    s = DemoSettings(incident_rate=rate)
    windows = incident_windows(START, START + timedelta(days=7), s)
    steps = sum(int((last - first).total_seconds()) // 60 + 1 for _, _, first, last in windows)
    share = steps / (7 * 1440 * s.hosts)
    assert 0.5 * rate <= share <= 2 * rate


def test_incident_share_in_records(week: list[DemoRecord]) -> None:
    share = sum(r.incident is not None for r in week) / len(week)
    assert 0.01 <= share <= 0.04


def test_zero_rate_means_no_incidents() -> None:
    s = DemoSettings(incident_rate=0.0)
    assert incident_windows(START, START + timedelta(days=7), s) == []
    assert all(r.incident is None for r in generate(START, START + timedelta(days=1), s))


def test_every_kind_occurs_over_a_month_roughly_equally(month: list[DemoRecord]) -> None:
    windows = incident_windows(START, START + timedelta(days=30), DemoSettings())
    kinds = Counter(kind for _, kind, _, _ in windows)
    assert set(kinds) == set(INCIDENT_KINDS)
    assert all(count >= len(windows) / 12 for count in kinds.values())
    assert {r.incident for r in month} == {None, *INCIDENT_KINDS}


def test_incident_windows_match_generate_flags() -> None:
    s = DemoSettings(hosts=3, incident_rate=0.05, seed=3)
    start = START + timedelta(hours=5, seconds=31)  # unaligned, cuts through incidents on both ends likely
    end = start + timedelta(days=4, hours=3)
    records = generate(start, end, s)
    flagged = {(r.key, r.ts): r.incident for r in records if r.incident is not None}
    expected: dict[tuple[str, datetime], str] = {}
    per_host: dict[str, list[tuple[datetime, datetime]]] = {}
    for host, kind, first, last in incident_windows(start, end, s):
        assert first <= last
        assert first < end and last >= start
        length = int((last - first).total_seconds()) // 60 + 1
        assert 3 <= length <= 15
        per_host.setdefault(host, []).append((first, last))
        ts = first
        while ts <= last:
            if start <= ts < end:
                expected[(host, ts)] = kind
            ts += timedelta(seconds=s.step_s)
    assert flagged == expected
    for spans in per_host.values():  # incidents of a host never overlap nor touch
        spans.sort()
        for (_, last), (nxt, _) in itertools.pairwise(spans):
            assert nxt - last > timedelta(seconds=s.step_s)


def test_incident_windows_split_consistent() -> None:
    s = DemoSettings()
    a, c = START, START + timedelta(days=3)
    b = START + timedelta(days=1, hours=7, seconds=11)
    whole = incident_windows(a, c, s)
    left = incident_windows(a, b, s)
    right = incident_windows(b, c, s)
    merged = left + [w for w in right if w not in left]
    assert sorted(merged, key=lambda w: (w[2], w[0])) == whole


def _normal_fit(recs: list[DemoRecord]) -> tuple[float, float]:
    normal = [r for r in recs if r.incident is None]
    slope, intercept = np.polyfit(_col(normal, "request_rate"), _col(normal, "cpu_pct"), 1)
    return float(slope), float(intercept)


def test_cpu_decoupled_high_cpu_without_load(month: list[DemoRecord]) -> None:
    seen = 0
    for host, recs in _by_host(month).items():
        slope, intercept = _normal_fit(recs)
        normal = [r for r in recs if r.incident is None]
        normal_cpu = _col(normal, "cpu_pct")
        rate_p75 = float(np.percentile(_col(normal, "request_rate"), 75))
        decoupled = [r for r in recs if r.incident == "cpu_decoupled"]
        seen += len(decoupled)
        if not decoupled:
            continue
        cpu = _col(decoupled, "cpu_pct")
        rate = _col(decoupled, "request_rate")
        assert np.all(cpu >= 70), host
        assert np.all(cpu <= 98), host
        assert np.all(cpu >= np.percentile(normal_cpu, 75)), host  # CPU of a busy hour ...
        assert np.all(rate <= rate_p75), host  # ... while the load is not busy
        assert np.all(cpu - (intercept + slope * rate) > 15), host  # the broken correlation
        # each value alone stays near its normal range
        assert float(cpu.max()) <= float(normal_cpu.max()) + 10, host
    assert seen > 0


def test_traffic_drop_keeps_cpu(month: list[DemoRecord]) -> None:
    seen = 0
    for host, recs in _by_host(month).items():
        slope, intercept = _normal_fit(recs)
        dropped = [r for r in recs if r.incident == "traffic_drop"]
        seen += len(dropped)
        if not dropped:
            continue
        rate = _col(dropped, "request_rate")
        implied_rate = (_col(dropped, "cpu_pct") - intercept) / slope
        assert np.all(rate < 0.4 * implied_rate), host  # 5-20 % of the load the CPU stands for, plus noise
        assert float(np.median(rate / implied_rate)) < 0.2, host
    assert seen > 0


def test_latency_error_memory_region_incidents(month: list[DemoRecord]) -> None:
    for host, recs in _by_host(month).items():
        normal = [r for r in recs if r.incident is None]
        p50_med = float(np.median(_col(normal, "p50_latency_ms")))
        p99_med = float(np.median(_col(normal, "p99_latency_ms")))
        own_region = normal[0].fields["region"]
        for r in recs:
            if r.incident == "latency_spike":
                assert float(r.fields["p50_latency_ms"]) > 1.8 * p50_med, host
                assert float(r.fields["p99_latency_ms"]) > 3.0 * p99_med, host
            if r.incident == "error_burst":
                assert 0.05 <= float(r.fields["error_rate"]) <= 0.30, host
            else:
                assert float(r.fields["error_rate"]) < 0.05, host
            assert (r.fields["status_class"] == "5xx") == (r.incident == "error_burst"), host
            assert (r.fields["region"] != own_region) == (r.incident == "region_misroute"), host


def test_memory_leak_climbs_to_high_level() -> None:
    s = DemoSettings(incident_rate=0.1, seed=5)
    start, end = START, START + timedelta(days=3)
    records = {(r.key, r.ts): r for r in generate(start, end, s)}
    leaks = [w for w in incident_windows(start, end, s) if w[1] == "memory_leak"]
    assert leaks
    for host, _, first, last in leaks:
        if first < start or last >= end:
            continue
        mem = [
            float(records[(host, first + timedelta(minutes=i))].fields["memory_pct"])
            for i in range(int((last - first).total_seconds()) // 60 + 1)
        ]
        assert all(b > a for a, b in itertools.pairwise(mem))
        assert 90.0 <= mem[-1] <= 98.0
        before = float(records[(host, first - timedelta(minutes=1))].fields["memory_pct"])
        assert before < 80.0
