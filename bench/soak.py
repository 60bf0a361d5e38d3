"""Soak test: a real daemon process under a steady load of HTTP ingestion plus a burst, on loopback.

Run from the repository root: `.venv/bin/python bench/soak.py [--minutes 10] [--rate 200]`.

Starts `vigil run` (SQLite store in a temporary folder, one `http` detector with a small model), POSTs
`--rate` records per second in batches of 100 for `--minutes` minutes with a burst of `--burst-factor`
times the rate for `--burst-seconds` in the middle, only to 127.0.0.1, then waits (bounded) for the
scoring backlog to drain, stops the daemon and reports throughput, POST latency, the daemon's resident
memory, errors and the pending backlog. Prints a Markdown table and writes it to bench/results/soak.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                 # run as a script: make `tests` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import platform
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2
import numpy as np

from tests.support.config import HEALTHY, WEB_FEATURES, config_text, daemon_heading, detector, write_config_file
from tests.support.daemon import BenchDaemon
from tests.support.net import free_port
from tests.support.prom import samples

RESULTS = Path(__file__).parent / "results" / "soak.md"
BATCH = 100
WARMUP_S = 60.0
DRAIN_S = 120.0
REGIONS = ("eu-west", "us-east", "ap-south")

def soak_config(port: int) -> str:
    """The daemon: SQLite in ./state, one `soak` detector retrained every 5 min on up to 5,000 records."""
    return config_text(daemon_heading(port), detector(
        "soak", {**WEB_FEATURES, **HEALTHY},
        model={"hidden": [16], "latent": 2, "epochs": 20, "batch_size": 128, "patience": 3, "seed": 0,
               "device": "cpu"},
        training={"interval": "5m", "window": "1d", "min_records": 1000, "max_records": 5000},
        scoring={"interval": "1s", "batch_size": 5000}))


def start_daemon(workdir: Path) -> BenchDaemon:
    """`vigil run` on `soak_config` in `workdir`, answering /healthz."""
    port = free_port()
    config = write_config_file(workdir / "config.toml", soak_config(port))
    daemon = BenchDaemon(config, port, workdir / "state", detector="soak")
    daemon.start()
    return daemon


def batch_body(rng: np.random.Generator, seq: int) -> bytes:
    """100 records stamped now: cpu and latency follow load, one in 500 is an obvious anomaly."""
    now = datetime.now(UTC).isoformat()
    load = rng.uniform(0.2, 1.0, BATCH)
    cpu = 10 + 70 * load + rng.normal(0, 2, BATCH)
    latency = 40 + 120 * load + rng.normal(0, 4, BATCH)
    records = []
    for i in range(BATCH):
        n = seq * BATCH + i
        odd = n % 500 == 499
        records.append({
            "ts": now, "host": f"web-{n % 8}", "load": round(float(load[i]), 4),
            "cpu": 99.0 if odd else round(float(cpu[i]), 3),
            "latency": 1500.0 if odd else round(float(latency[i]), 3),
            "region": REGIONS[n % 3], "healthy": not odd,
        })
    return json.dumps(records).encode()


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    sent: int = 0


@dataclass
class Results:
    errors: Counter[str] = field(default_factory=Counter)
    late: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(minutes: float, rate: float, burst_factor: float, burst_seconds: float, workers: int) -> dict[str, Any]:
    steady_s = minutes * 60.0
    with tempfile.TemporaryDirectory(prefix="vigil-soak-") as tmp:
        daemon = start_daemon(Path(tmp))
        try:
            result = drive(daemon, steady_s, rate, burst_factor, burst_seconds, workers)
        finally:
            exit_code = daemon.stop()
            print(f"daemon stopped, exit status {exit_code}", file=sys.stderr)
        result["exit_code"] = exit_code
        return result


def drive(daemon: BenchDaemon, steady_s: float, rate: float, burst_factor: float, burst_seconds: float,
          workers: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"}
    http = httpx2.Client(base_url=daemon.url, timeout=30,
                         limits=httpx2.Limits(max_connections=workers, max_keepalive_connections=workers))
    pool = ThreadPoolExecutor(max_workers=workers)
    results = Results()
    rng = np.random.default_rng(0)
    rss: list[tuple[float, int]] = []
    rss_start = daemon.rss()
    rss_warm: int | None = None

    def post(body: bytes, phase: Phase) -> None:
        started = time.perf_counter()
        try:
            response = http.post("/v1/detectors/soak/records", content=body, headers=headers)
        except httpx2.HTTPError as exc:
            with results.lock:
                results.errors[f"transport: {exc.__class__.__name__}"] += 1
            return
        elapsed = time.perf_counter() - started
        with results.lock:
            if response.status_code == 200:
                phase.latencies.append(elapsed)
                phase.accepted += int(response.json()["accepted"])
            else:
                results.errors[f"HTTP {response.status_code}"] += 1

    # steady half, burst, steady half: one schedule of (phase, start offset, duration, rate)
    half = steady_s / 2
    phases = {"steady": Phase("steady"), "burst": Phase("burst")}
    plan = [(phases["steady"], 0.0, half, rate),
            (phases["burst"], half, burst_seconds, rate * burst_factor),
            (phases["steady"], half + burst_seconds, steady_s - half, rate)]
    total_s = steady_s + burst_seconds
    t0 = time.monotonic()
    seq = 0
    next_sample = 0.0
    futures: list[Future[None]] = []
    for phase, offset, duration, phase_rate in plan:
        interval = BATCH / phase_rate
        n_batches = round(duration / interval)
        for i in range(n_batches):
            due = t0 + offset + i * interval
            while True:
                now = time.monotonic()
                if now - t0 >= next_sample:
                    rss.append((now - t0, daemon.rss()))
                    if rss_warm is None and now - t0 >= WARMUP_S:
                        rss_warm = rss[-1][1]
                    next_sample += 5.0
                if now >= due:
                    break
                time.sleep(min(due - now, 0.05))
            if time.monotonic() - due > interval:
                results.late += 1
            phase.sent += BATCH
            futures.append(pool.submit(post, batch_body(rng, seq), phase))
            seq += 1
        print(f"{time.monotonic() - t0:7.1f} s: {phase.name} phase part done, {seq} batches sent", file=sys.stderr)
    pool.shutdown(wait=True)
    load_s = time.monotonic() - t0
    rss_end_load = daemon.rss()

    pending_at_end = daemon.status()["records"]["pending"]
    drain_started = time.monotonic()
    pending_after = pending_at_end
    while pending_after > 0 and time.monotonic() - drain_started < DRAIN_S:
        time.sleep(1.0)
        pending_after = daemon.status()["records"]["pending"]
    drain_s = time.monotonic() - drain_started
    final = daemon.status()
    rss_end = daemon.rss()
    metrics_text = daemon.metrics()
    http.close()
    db = daemon.state_dir / "vigil.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        [(stored,)] = conn.execute("SELECT count(*) FROM records WHERE detector = 'soak'").fetchall()
        [(models,)] = conn.execute("SELECT count(*) FROM model_versions WHERE detector = 'soak'").fetchall()
    finally:
        conn.close()
    store_errors = sum(value for _, value in samples(metrics_text, "vigil_errors_total"))
    accepted = phases["steady"].accepted + phases["burst"].accepted
    return {
        "planned_s": total_s, "load_s": load_s, "phases": phases, "results": results,
        "accepted": accepted, "sent": phases["steady"].sent + phases["burst"].sent, "stored": stored,
        "rss_start": rss_start, "rss_warm": rss_warm, "rss_end_load": rss_end_load, "rss_end": rss_end,
        "rss_max": max([v for _, v in rss] + [rss_end_load, rss_end]), "rss_samples": rss,
        "pending_at_end": pending_at_end, "pending_after_drain": pending_after, "drain_s": drain_s,
        "scored": final["records"]["scored"], "outliers": final["outliers"], "models": models,
        "daemon_errors": store_errors,
    }


def machine() -> str:
    import torch

    return (f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs (os.cpu_count()), "
            f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")


def report(r: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    mib = 1024 * 1024
    steady, burst = r["phases"]["steady"], r["phases"]["burst"]
    steady_s = args.minutes * 60.0
    errors = r["results"].errors
    error_text = ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "none"
    warm = f"{r['rss_warm'] / mib:.0f}" if r["rss_warm"] else "n/a (run shorter than the warm-up)"
    growth = f"{(r['rss_end'] - r['rss_warm']) / mib:+.1f}" if r["rss_warm"] else "n/a"
    lat = {name: [x * 1000 for x in p.latencies] for name, p in (("steady", steady), ("burst", burst))}
    rows = [
        ("duration (load, s)", f"{r['load_s']:.0f} (planned {r['planned_s']:.0f})"),
        ("records sent / accepted / stored", f"{r['sent']:,} / {r['accepted']:,} / {r['stored']:,}"),
        ("throughput, steady (accepted records/s)", f"{steady.accepted / steady_s:.1f} (offered {args.rate:g})"),
        ("throughput, burst (accepted records/s)",
         f"{burst.accepted / args.burst_seconds:.1f} (offered {args.rate * args.burst_factor:g})"),
        ("throughput, whole run (accepted records/s)", f"{r['accepted'] / r['load_s']:.1f}"),
        ("100-record POST latency, steady p50 / p99 (ms)",
         f"{pct(lat['steady'], 50):.1f} / {pct(lat['steady'], 99):.1f} (max {max(lat['steady'], default=0):.0f})"),
        ("100-record POST latency, burst p50 / p99 (ms)",
         f"{pct(lat['burst'], 50):.1f} / {pct(lat['burst'], 99):.1f} (max {max(lat['burst'], default=0):.0f})"),
        ("daemon RSS at start / after warm-up / end (MiB)",
         f"{r['rss_start'] / mib:.0f} / {warm} / {r['rss_end'] / mib:.0f}"),
        ("RSS growth from warm-up to end (MiB); max RSS (MiB)", f"{growth}; max {r['rss_max'] / mib:.0f}"),
        ("request errors (non-200 or transport)", error_text),
        ("batches sent more than one interval late", str(r["results"].late)),
        ("`vigil_errors_total` (all components)", f"{r['daemon_errors']:g}"),
        ("pending at end of load / after drain",
         f"{r['pending_at_end']:,} / {r['pending_after_drain']:,} (drain {r['drain_s']:.0f} s, bound {DRAIN_S:.0f} s)"),
        ("scored / outliers / model versions trained", f"{r['scored']:,} / {r['outliers']:,} / {r['models']}"),
        ("daemon exit status after SIGTERM", str(r["exit_code"])),
    ]
    table = "\n".join(["| measure | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)])
    samples = ", ".join(f"{t:.0f}: {v / mib:.0f}" for t, v in r["rss_samples"][::12])
    intro = (
        f"One `vigil run` process (uvicorn, SQLite store in a temporary folder, one `http` detector with features "
        f"load, cpu, latency, region, healthy; model hidden=[16], latent=2, retrained every 5 min on up to 5,000 "
        f"records; scoring every 1 s). Load: {args.rate:g} records/s in POSTs of {BATCH} records (open loop, up to "
        f"{args.workers} requests in flight) for {args.minutes:g} min, with a burst of {args.burst_factor:g}x the "
        f"rate for {args.burst_seconds:g} s in the middle, loopback only; one record in 500 is an obvious anomaly. "
        f"Latency is the client-side time of one {BATCH}-record POST answered 200. RSS is VmRSS of the daemon "
        f"process, sampled every 5 s; warm-up is the first {WARMUP_S:.0f} s (the first model trains in it). After "
        f"the load the bench waits up to {DRAIN_S:.0f} s for the scoring backlog, then stops the daemon.")
    noise = (
        f"The load generator runs on the same machine as the daemon, and other engineers were using the same "
        f"{os.cpu_count()} cores (tests, builds) while this ran, so latencies, p99 above all, are noisy; "
        f"throughput followed the offered rate whenever no batch was sent late.")
    return "\n\n".join([
        "# Soak: steady HTTP ingestion plus a burst against a real daemon", intro, table,
        f"RSS samples (elapsed s: MiB, every 60 s): {samples}.", noise, f"Machine: {machine()}.",
        f"Command: `{command}`"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="steady load duration (default 10)")
    parser.add_argument("--rate", type=float, default=200.0, help="records per second (default 200)")
    parser.add_argument("--burst-factor", type=float, default=10.0, help="burst rate multiple (default 10)")
    parser.add_argument("--burst-seconds", type=float, default=30.0, help="burst duration (default 30)")
    parser.add_argument("--workers", type=int, default=16, help="most requests in flight (default 16)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown file to write")
    args = parser.parse_args()
    if args.rate <= 0 or args.minutes <= 0 or args.burst_factor < 1 or args.burst_seconds < 0:
        parser.error("--rate and --minutes must be positive, --burst-factor >= 1, --burst-seconds >= 0")
    command = ".venv/bin/python bench/soak.py" + "".join(
        f" {flag} {value:g}" for flag, value, default in
        (("--minutes", args.minutes, 10.0), ("--rate", args.rate, 200.0),
         ("--burst-factor", args.burst_factor, 10.0), ("--burst-seconds", args.burst_seconds, 30.0))
        if value != default)
    result = run(args.minutes, args.rate, args.burst_factor, args.burst_seconds, args.workers)
    text = report(result, args, command)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    if result["stored"] != result["accepted"]:
        sys.exit(f"stored {result['stored']} records but {result['accepted']} were acknowledged")


if __name__ == "__main__":
    main()
