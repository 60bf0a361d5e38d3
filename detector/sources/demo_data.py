"""Deterministic synthetic multivariate server metrics with injected incidents, for the ``demo`` source."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

__all__ = [
    "INCIDENT_KINDS",
    "REGIONS",
    "DemoRecord",
    "DemoSettings",
    "generate",
    "incident_windows",
]

logger = logging.getLogger(__name__)

INCIDENT_KINDS: tuple[str, ...] = (
    "latency_spike",
    "error_burst",
    "cpu_decoupled",
    "memory_leak",
    "traffic_drop",
    "region_misroute",
)
REGIONS: tuple[str, ...] = ("eu-west", "us-east", "ap-south")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_DAY_S = 86_400
_WEEK_DAYS = 7
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday == 0)

# Every random quantity is drawn from a stream keyed by (seed, stream tag, host index, [block index]), so a
# record is a pure function of (seed, host index, step index): blocks are computed whole and then sliced.
_BLOCK = 1440  # steps per noise block and per incident block
_TAG_HOST, _TAG_NOISE, _TAG_INCIDENTS = 0, 1, 2

# Noise channels of the per-block white-noise matrix.
_CH_RATE, _CH_CPU, _CH_LAT, _CH_RATIO, _CH_ERR, _CH_MEM, _CH_STATUS, _CH_INCIDENT = range(8)
_N_CHANNELS = 8
# Smooth (autocorrelated) noise: white noise filtered by a causal exponential kernel with unit gain in
# variance; the kernel reaches back into the previous block so the noise is continuous across blocks.
_SMOOTH_TAU = 15.0
_SMOOTH_LEN = 60
_SMOOTH_KERNEL: FloatArray = np.exp(-np.arange(_SMOOTH_LEN, dtype=np.float64) / _SMOOTH_TAU)
_SMOOTH_KERNEL /= np.sqrt(np.sum(_SMOOTH_KERNEL**2))

_MIN_INCIDENT_LEN = 3
_MAX_INCIDENT_LEN = 15
_MEAN_INCIDENT_LEN = (_MIN_INCIDENT_LEN + _MAX_INCIDENT_LEN) / 2
_STATUS_3XX_Z = 2.748  # P(N(0, 1) > z) ~= 0.3 %: share of normal steps whose dominant class is 3xx
_WEEKEND_FACTOR = 0.7

_KIND_INDEX = {kind: i for i, kind in enumerate(INCIDENT_KINDS)}
_CPU_DECOUPLED = _KIND_INDEX["cpu_decoupled"]
# cpu_decoupled only starts in the low-load half of the day (otherwise CPU at peak level would be normal);
# the weights keep all kinds equally likely overall: high half 1/5 each of the other five, low half 1/3
# cpu_decoupled and 2/15 each of the others, i.e. 1/6 for every kind over a whole day.
_KIND_CUM_HIGH: FloatArray = np.cumsum([0.0 if k == _CPU_DECOUPLED else 1 / 5 for k in range(6)])
_KIND_CUM_LOW: FloatArray = np.cumsum([1 / 3 if k == _CPU_DECOUPLED else 2 / 15 for k in range(6)])


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Shape of the demo data: how many hosts, how often, which seed, how many incidents."""

    hosts: int = 4
    step_s: int = 60
    seed: int = 7
    incident_rate: float = 0.02

    def __post_init__(self) -> None:
        if self.hosts < 1:
            raise ValueError(f"hosts must be >= 1, got {self.hosts}")
        if self.step_s < 1:
            raise ValueError(f"step_s must be >= 1, got {self.step_s}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 <= self.incident_rate <= 1.0:
            raise ValueError(f"incident_rate must be within [0, 1], got {self.incident_rate}")


@dataclass(frozen=True, slots=True)
class DemoRecord:
    """One host's metrics at one simulated time step, with the incident (if any) injected into it."""

    ts: datetime
    key: str
    fields: dict[str, float | str]
    incident: str | None


@dataclass(frozen=True, slots=True)
class _HostParams:
    """Per-host constants, drawn once from (seed, host index)."""

    region: int
    peak_rate: float  # expected req/s at weekday mid-day
    trough_frac: float  # night load relative to the peak
    phase_days: float  # shift of the daily cycle, in days
    cpu_idle: float
    cpu_peak: float
    p50_base: float
    p50_load_gain: float
    p99_ratio: float
    err_base: float
    mem_level: float
    mem_amp: float
    mem_period_s: int
    mem_phase: float
    incident_offset: int  # incident blocks are shifted by this many steps relative to noise blocks


@dataclass(frozen=True, slots=True)
class _Incident:
    """One incident of one host, in absolute step indices; p1..p3 in [0, 1) parameterise its shape."""

    kind: int
    first: int
    length: int
    p1: float
    p2: float
    p3: float


def _zigzag(value: int) -> int:
    """Map any integer to a distinct non-negative one (SeedSequence only takes non-negative entropy)."""
    return 2 * value if value >= 0 else -2 * value - 1


def _rng(settings: DemoSettings, tag: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([settings.seed, tag, *key]))


def _host_params(settings: DemoSettings, host: int) -> _HostParams:
    rng = _rng(settings, _TAG_HOST, host)
    u = rng.random(15)
    return _HostParams(
        region=host % len(REGIONS),
        peak_rate=float(40.0 + 210.0 * u[0]),
        trough_frac=float(0.15 + 0.15 * u[1]),
        phase_days=float((u[2] - 0.5) * 2.0 / 24.0),
        cpu_idle=float(5.0 + 7.0 * u[3]),
        cpu_peak=float(70.0 + 10.0 * u[4]),
        p50_base=float(15.0 + 30.0 * u[5]),
        p50_load_gain=float(0.3 + 0.5 * u[6]),
        p99_ratio=float(2.7 + 0.5 * u[7]),
        err_base=float(0.0012 + 0.0018 * u[8]),
        mem_level=float(40.0 + 25.0 * u[9]),
        mem_amp=float(2.0 + 4.0 * u[10]),
        mem_period_s=int((6.0 + 18.0 * u[11]) * 3600.0),
        mem_phase=float(2.0 * math.pi * u[12]),
        incident_offset=int(u[13] * _BLOCK),
    )


def _day_fraction(steps: IntArray, step_s: int) -> FloatArray:
    seconds: IntArray = (steps * step_s) % _DAY_S
    return seconds.astype(np.float64) / _DAY_S


def _daily_shape(day_fraction: FloatArray, params: _HostParams) -> FloatArray:
    """Load relative to the weekday peak: trough_frac at night, 1 at mid-day (before the weekly factor)."""
    wave = 0.5 * (1.0 - np.cos(2.0 * np.pi * (day_fraction - params.phase_days)))
    shape: FloatArray = params.trough_frac + (1.0 - params.trough_frac) * wave
    return shape


def _incidents_of_block(
    settings: DemoSettings, host: int, params: _HostParams, block: int
) -> list[_Incident]:
    """Incidents of incident block ``block``: steps [block*B + offset, (block+1)*B + offset), non-overlapping.

    Each incident lies inside its block and is followed by at least one free step, so incidents never touch,
    not even across block boundaries.
    """
    if settings.incident_rate <= 0.0:
        return []
    rng = _rng(settings, _TAG_INCIDENTS, host, _zigzag(block))
    count = int(rng.poisson(settings.incident_rate * _BLOCK / _MEAN_INCIDENT_LEN))
    lengths = rng.integers(_MIN_INCIDENT_LEN, _MAX_INCIDENT_LEN + 1, size=count)
    shape_u = rng.random((count, 4))
    while count > 0 and int(lengths[:count].sum()) + count > _BLOCK:
        count -= 1
    if count == 0:
        return []
    lengths = lengths[:count]
    free = _BLOCK - int(lengths.sum()) - count
    gaps = np.sort(rng.integers(0, free + 1, size=count))
    starts = gaps + np.concatenate(([0], np.cumsum(lengths[:-1] + 1)))
    first_steps = block * _BLOCK + params.incident_offset + starts
    low_load = _daily_shape(_day_fraction(first_steps, settings.step_s), params) < 0.5 * (
        1.0 + params.trough_frac
    )
    incidents = []
    for i in range(count):
        cumulative = _KIND_CUM_LOW if low_load[i] else _KIND_CUM_HIGH
        kind = min(int(np.searchsorted(cumulative, shape_u[i, 0], side="right")), len(INCIDENT_KINDS) - 1)
        incidents.append(
            _Incident(
                kind=kind,
                first=int(first_steps[i]),
                length=int(lengths[i]),
                p1=float(shape_u[i, 1]),
                p2=float(shape_u[i, 2]),
                p3=float(shape_u[i, 3]),
            )
        )
    return incidents


def _incidents_overlapping(
    settings: DemoSettings, host: int, params: _HostParams, first: int, stop: int
) -> list[_Incident]:
    """Incidents of one host with at least one step in [first, stop), in order."""
    lo = (first - params.incident_offset) // _BLOCK
    hi = (stop - 1 - params.incident_offset) // _BLOCK
    found = []
    for block in range(lo, hi + 1):
        for incident in _incidents_of_block(settings, host, params, block):
            if incident.first < stop and incident.first + incident.length > first:
                found.append(incident)
    return found


def _white_noise(settings: DemoSettings, host: int, block: int) -> FloatArray:
    noise: FloatArray = _rng(settings, _TAG_NOISE, host, _zigzag(block)).standard_normal(
        (_BLOCK, _N_CHANNELS)
    )
    return noise


@dataclass(frozen=True, slots=True)
class _Block:
    """Column arrays of one host over one whole noise block."""

    rate: FloatArray
    p50: FloatArray
    p99: FloatArray
    err: FloatArray
    cpu: FloatArray
    mem: FloatArray
    region: list[str]
    status: list[str]
    incident: list[str | None]


def _clip_round(values: FloatArray, lo: float, hi: float, decimals: int) -> FloatArray:
    clipped: FloatArray = np.clip(values, lo, hi).astype(np.float64)
    rounded: FloatArray = np.round(clipped, decimals)
    return rounded


def _host_block(settings: DemoSettings, host: int, params: _HostParams, block: int) -> _Block:
    """All records of one host for steps [block*B, (block+1)*B), computed whole so slices are consistent."""
    white = _white_noise(settings, host, block)
    previous = _white_noise(settings, host, block - 1)[-(_SMOOTH_LEN - 1) :]
    windows = np.lib.stride_tricks.sliding_window_view(
        np.concatenate((previous, white)), _SMOOTH_LEN, axis=0
    )  # (B, channels, kernel): window i covers steps i-L+1..i of this block
    smooth: FloatArray = windows @ _SMOOTH_KERNEL[::-1]

    steps: IntArray = np.arange(block * _BLOCK, (block + 1) * _BLOCK, dtype=np.int64)
    seconds: IntArray = steps * settings.step_s
    weekday = (np.floor_divide(seconds, _DAY_S) + _EPOCH_WEEKDAY) % _WEEK_DAYS
    weekly = np.where(weekday >= 5, _WEEKEND_FACTOR, 1.0)
    expected_rate = params.peak_rate * _daily_shape(_day_fraction(steps, settings.step_s), params) * weekly

    # Normal behaviour: CPU follows the realised load; latency and errors rise mildly with it.
    rate = expected_rate * np.exp(0.05 * smooth[:, _CH_RATE] + 0.025 * white[:, _CH_RATE])
    load = rate / params.peak_rate
    cpu_slope = (params.cpu_peak - params.cpu_idle) / params.peak_rate
    cpu = params.cpu_idle + cpu_slope * rate + 1.2 * smooth[:, _CH_CPU] + 1.2 * white[:, _CH_CPU]
    p50 = (
        params.p50_base
        * (1.0 + params.p50_load_gain * load**2)
        * np.exp(0.06 * smooth[:, _CH_LAT] + 0.04 * white[:, _CH_LAT])
    )
    ratio = np.clip(params.p99_ratio + 0.4 * load + 0.12 * white[:, _CH_RATIO], 2.5, 4.0)
    p99 = p50 * ratio
    err = params.err_base * (0.7 + 0.6 * load) * np.exp(0.25 * smooth[:, _CH_ERR] + 0.15 * white[:, _CH_ERR])
    err = np.clip(err, 0.0002, 0.01)
    phase = 2.0 * np.pi * (seconds % params.mem_period_s).astype(np.float64) / params.mem_period_s
    mem: FloatArray = (
        params.mem_level
        + params.mem_amp * np.sin(phase + params.mem_phase)
        + 1.0 * smooth[:, _CH_MEM]
        + 0.2 * white[:, _CH_MEM]
    )
    status = np.where(white[:, _CH_STATUS] > _STATUS_3XX_Z, "3xx", "2xx").tolist()
    region = [REGIONS[params.region]] * _BLOCK
    incident: list[str | None] = [None] * _BLOCK

    jitter = white[:, _CH_INCIDENT]
    for inc in _incidents_overlapping(settings, host, params, int(steps[0]), int(steps[-1]) + 1):
        lo = max(inc.first, int(steps[0])) - int(steps[0])
        hi = min(inc.first + inc.length, int(steps[-1]) + 1) - int(steps[0])
        sl = slice(lo, hi)
        kind = INCIDENT_KINDS[inc.kind]
        incident[sl] = [kind] * (hi - lo)
        if kind == "latency_spike":
            p50[sl] *= (3.0 + 3.0 * inc.p1) * np.exp(0.05 * jitter[sl])
            p99[sl] *= (5.0 + 5.0 * inc.p2) * np.exp(0.05 * jitter[sl])
        elif kind == "error_burst":
            err[sl] = np.clip((0.05 + 0.25 * inc.p1) * np.exp(0.1 * jitter[sl]), 0.05, 0.30)
            status[sl] = ["5xx"] * (hi - lo)
            p50[sl] *= 1.15 + 0.35 * inc.p2
            p99[sl] *= 1.3 + 0.5 * inc.p2
        elif kind == "cpu_decoupled":
            cpu[sl] = np.minimum(params.cpu_peak + 8.0 + 8.0 * inc.p1 + 1.2 * jitter[sl], 98.0)
        elif kind == "memory_leak":
            position = np.arange(lo, hi) + int(steps[0]) - inc.first + 1
            target = 93.0 + 4.0 * inc.p1
            mem[sl] += (target - mem[sl]) * position / inc.length
        elif kind == "traffic_drop":
            # Only the rate drops: CPU and latency keep the values computed from the normal load above.
            rate[sl] *= 0.05 + 0.15 * inc.p1
        else:  # region_misroute
            wrong = REGIONS[(params.region + 1 + int(inc.p1 * 2.0)) % len(REGIONS)]
            region[sl] = [wrong] * (hi - lo)

    return _Block(
        rate=np.round(rate, 3),
        p50=np.round(p50, 2),
        p99=np.round(np.maximum(p99, p50), 2),
        err=_clip_round(err, 0.0, 1.0, 6),
        cpu=_clip_round(cpu, 0.0, 100.0, 2),
        mem=_clip_round(mem, 0.0, 100.0, 2),
        region=region,
        status=status,
        incident=incident,
    )


def _step_bounds(start: datetime, end: datetime, step_s: int) -> tuple[int, int]:
    """First and one-past-last step index n with start <= n*step_s < end (seconds since the epoch)."""
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware, got naive {value!r}")
    step_us = step_s * 1_000_000
    start_us = (start - _EPOCH) // _ONE_US
    end_us = (end - _EPOCH) // _ONE_US
    return -(-start_us // step_us), -(-end_us // step_us)


def _host_name(host: int) -> str:
    return f"web-{host + 1}"


def generate(start: datetime, end: datetime, settings: DemoSettings) -> list[DemoRecord]:
    """All records with start <= ts < end (ts aligned to step_s), ordered by ts then host."""
    first, stop = _step_bounds(start, end, settings.step_s)
    if stop <= first:
        return []
    params = [_host_params(settings, host) for host in range(settings.hosts)]
    names = [_host_name(host) for host in range(settings.hosts)]
    records: list[DemoRecord] = []
    for block in range(first // _BLOCK, (stop - 1) // _BLOCK + 1):
        lo = max(first - block * _BLOCK, 0)
        hi = min(stop - block * _BLOCK, _BLOCK)
        columns = []
        for host in range(settings.hosts):
            b = _host_block(settings, host, params[host], block)
            columns.append(
                (
                    b.rate[lo:hi].tolist(),
                    b.p50[lo:hi].tolist(),
                    b.p99[lo:hi].tolist(),
                    b.err[lo:hi].tolist(),
                    b.cpu[lo:hi].tolist(),
                    b.mem[lo:hi].tolist(),
                    b.region[lo:hi],
                    b.status[lo:hi],
                    b.incident[lo:hi],
                )
            )
        for i in range(hi - lo):
            ts = _EPOCH + timedelta(seconds=(block * _BLOCK + lo + i) * settings.step_s)
            for host in range(settings.hosts):
                rate, p50, p99, err, cpu, mem, region, status, incident = columns[host]
                records.append(
                    DemoRecord(
                        ts=ts,
                        key=names[host],
                        fields={
                            "request_rate": rate[i],
                            "p50_latency_ms": p50[i],
                            "p99_latency_ms": p99[i],
                            "error_rate": err[i],
                            "cpu_pct": cpu[i],
                            "memory_pct": mem[i],
                            "region": region[i],
                            "status_class": status[i],
                        },
                        incident=incident[i],
                    )
                )
    logger.debug("demo data: %d records for steps [%d, %d)", len(records), first, stop)
    return records


def incident_windows(
    start: datetime, end: datetime, settings: DemoSettings
) -> list[tuple[str, str, datetime, datetime]]:
    """(host, kind, first_ts, last_ts) of each incident with a step in [start, end), by first_ts then host.

    first_ts and last_ts are the incident's full extent (both inclusive), which may reach outside
    [start, end); within it they agree with the ``incident`` flags of :func:`generate`.
    """
    first, stop = _step_bounds(start, end, settings.step_s)
    if stop <= first:
        return []
    found: list[tuple[int, int, str, str, datetime, datetime]] = []
    for host in range(settings.hosts):
        params = _host_params(settings, host)
        for inc in _incidents_overlapping(settings, host, params, first, stop):
            found.append(
                (
                    inc.first,
                    host,
                    _host_name(host),
                    INCIDENT_KINDS[inc.kind],
                    _EPOCH + timedelta(seconds=inc.first * settings.step_s),
                    _EPOCH + timedelta(seconds=(inc.first + inc.length - 1) * settings.step_s),
                )
            )
    found.sort(key=lambda item: (item[0], item[1]))
    return [(name, kind, first_ts, last_ts) for _, _, name, kind, first_ts, last_ts in found]
