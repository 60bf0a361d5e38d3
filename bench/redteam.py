"""Red-team repeat (issue 28): a real daemon under the header, slow-connection and CSV-export attacks, on loopback.

Run from the repository root: `.venv/bin/python bench/redteam.py [--export-outliers 100000]`.

Starts `vigil run` with the default [http] settings (SQLite store in a temporary folder, one `http` detector; the
store seeded with `--export-outliers` outliers before the start), then runs three bounded attacks against
127.0.0.1 only, one after the other, each while (and 3 s after) a sampler reads the daemon's resident memory
(VmRSS) and times `GET /healthz` every 0.2 s:

* headers: 4 clients, each pushing 400 MB of request head (1 MiB writes; when the server cuts a request off,
  on a new connection), for at most 60 s;
* slow: 90 connections, each sending a request line and then one header line a second, for at most 60 s;
* exports: 4 concurrent `GET /v1/outliers.csv?limit=...` of every seeded outlier, read to the end (at most 300 s).

Targets: RSS under 1 GiB and /healthz under 100 ms throughout. Prints a Markdown table and writes it to
bench/results/redteam.md with the command, the commit and the machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                 # run as a script: make `tests` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import platform
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2

from tests.support.config import WEB_FEATURES, config_text, daemon_heading, detector, write_config_file
from tests.support.daemon import BenchDaemon
from tests.support.net import free_port

RESULTS = Path(__file__).parent / "results" / "redteam.md"
GIB = 1024 ** 3
RSS_TARGET = 1 * GIB
HEALTHZ_TARGET_S = 0.100
SAMPLE_S = 0.2
AFTERMATH_S = 3.0


# -- the daemon and its seeded store ---------------------------------------------------------------------------

def seed_outliers(url: str, n: int) -> None:
    """`n` outliers of detector `web` (one model version row, no weights: status `rejected`), written straight
    into the migrated store before the daemon starts."""
    from sqlalchemy import insert

    from detector.store.db import open_engine, upgrade
    from detector.store.tables import ModelVersionRow, OutlierRow

    engine = open_engine(url)
    upgrade(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        model_id = conn.execute(insert(ModelVersionRow).values(
            detector="web", version=1, status="rejected", created_at=now, n_records=0, threshold=1.0, weights=b"",
            meta={}).returning(ModelVersionRow.id)).scalar_one()
        start = now - timedelta(days=2)
        for first in range(0, n, 10_000):
            conn.execute(insert(OutlierRow), [{
                "detector": "web", "ts": start + timedelta(seconds=i), "key": f"web-{i % 16}",
                "fields": {"load": 0.3, "cpu": 99.0, "latency": 1500.0 + i % 100, "region": "eu-west"},
                "score": 5.0 + i % 7, "threshold": 1.0, "model_version_id": model_id,
                "contributions": [{"feature": "latency", "share": 0.7}, {"feature": "cpu", "share": 0.3}],
                "expected": {"load": 0.3, "cpu": 31.0, "latency": 76.0, "region": "eu-west"},
                "review_state": "unreviewed", "created_at": now,
            } for i in range(first, min(n, first + 10_000))])
    engine.dispose()


def start_daemon(workdir: Path, outliers: int) -> BenchDaemon:
    port = free_port()
    config = write_config_file(workdir / "config.toml",
                               config_text(daemon_heading(port), detector("web", WEB_FEATURES)))
    if outliers:
        seed_outliers(f"sqlite:///{workdir / 'state' / 'vigil.db'}", outliers)
    daemon = BenchDaemon(config, port, workdir / "state", http_timeout=10)
    daemon.start()
    return daemon


# -- sampling --------------------------------------------------------------------------------------------------

@dataclass
class Samples:
    rss: list[int] = field(default_factory=list)
    healthz_s: list[float] = field(default_factory=list)
    failures: int = 0


class Sampler:
    """Every SAMPLE_S: the daemon's RSS and the time of one GET /healthz (on its own kept-alive connection)."""

    def __init__(self, daemon: BenchDaemon) -> None:
        self.daemon = daemon
        self.samples = Samples()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Samples:
        self._thread.start()
        return self.samples

    def __exit__(self, *exc: object) -> None:
        time.sleep(AFTERMATH_S)              # and a little after it: what the attack left behind
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx2.Client(base_url=self.daemon.url, timeout=10) as client:
            while not self._stop.is_set():
                self.samples.rss.append(self.daemon.rss())
                started = time.perf_counter()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx2.TransportError:
                    ok = False
                if ok:
                    self.samples.healthz_s.append(time.perf_counter() - started)
                else:
                    self.samples.failures += 1
                self._stop.wait(SAMPLE_S)


# -- the attacks -----------------------------------------------------------------------------------------------

def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _answer(sock: socket.socket) -> str:
    """The status line the server sent before closing (or why there is none)."""
    sock.settimeout(10)
    try:
        data = sock.recv(200)
    except OSError as exc:
        return type(exc).__name__
    return data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed, no answer"


def header_attack(port: int, connections: int = 4, head_mb: int = 400, limit_s: float = 60) -> str:
    """`connections` clients, each pushing `head_mb` MB of request head (1 MiB writes): when the server cuts a
    request off, the client opens a new connection and goes on with the rest, for at most `limit_s` s."""
    chunk = b"a" * (1 << 20)
    answers: list[str] = []
    pushed: list[int] = []
    biggest: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        total, deadline = 0, time.monotonic() + limit_s
        while total < head_mb * 1_000_000 and time.monotonic() < deadline:
            sent = 0
            with _connect(port) as sock:
                try:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ")
                    while total + sent < head_mb * 1_000_000 and time.monotonic() < deadline:
                        sock.sendall(chunk)
                        sent += len(chunk)
                    sock.sendall(b"\r\n\r\n")
                except OSError:
                    pass
                answer = _answer(sock)
            total += sent
            with lock:
                answers.append(answer)
                biggest.append(sent)
        with lock:
            pushed.append(total)

    _run_all([one] * connections)
    kinds = ", ".join(f"{answers.count(a)} x `{a}`" for a in sorted(set(answers)))
    return (f"{len(answers)} requests ({kinds}), each cut off after at most {max(biggest) / 1e6:.1f} MB written; "
            f"{sum(pushed) / 1e6:,.0f} MB pushed in all")


def slow_attack(port: int, connections: int = 90, limit_s: float = 60) -> str:
    """`connections` heads that never end: a request line, then a header line a second."""
    closed_after: list[float] = []
    answers: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        started = time.monotonic()
        with _connect(port) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                for i in range(int(limit_s)):
                    time.sleep(1)
                    sock.sendall(b"X-Slow-%d: b\r\n" % i)
            except OSError:
                pass
            answer = _answer(sock) if time.monotonic() - started < limit_s + 1 else "still open"
            with lock:
                answers.append(answer)
                if answer != "still open":
                    closed_after.append(time.monotonic() - started)

    _run_all([one] * connections)
    closed = len(closed_after)
    common = max(set(answers), key=answers.count)
    if not closed:
        return f"0/{connections} closed by the server within {limit_s:g} s"
    return (f"{closed}/{connections} closed by the server ({answers.count(common)} with `{common}`), "
            f"after {min(closed_after):.1f}-{max(closed_after):.1f} s")


def export_attack(daemon: BenchDaemon, outliers: int, connections: int = 4, limit_s: float = 300) -> str:
    rows: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        lines = 0
        deadline = time.monotonic() + limit_s
        with httpx2.Client(base_url=daemon.url, timeout=60) as client, \
                client.stream("GET", "/v1/outliers.csv", params={"limit": outliers}) as response:
            response.raise_for_status()
            for part in response.iter_bytes():
                lines += part.count(b"\n")
                if time.monotonic() > deadline:
                    break
        with lock:
            rows.append(lines - 1)              # the header line

    started = time.monotonic()
    _run_all([one] * connections)
    return (f"{connections} exports, rows {min(rows):,}-{max(rows):,} of {outliers:,} each, "
            f"in {time.monotonic() - started:.1f} s")


def _run_all(jobs: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- report ----------------------------------------------------------------------------------------------------

def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def row(name: str, outcome: str, seconds: float, s: Samples, rss_before: int) -> dict[str, Any]:
    rss_max = max(s.rss) if s.rss else rss_before
    worst = max(s.healthz_s) if s.healthz_s else float("nan")
    ok = rss_max < RSS_TARGET and worst < HEALTHZ_TARGET_S and not s.failures
    return {"attack": name, "outcome": outcome, "seconds": seconds, "rss_before": rss_before / 2**20,
            "rss_max": rss_max / 2**20, "p50": _quantile(s.healthz_s, 0.5) * 1000,
            "p99": _quantile(s.healthz_s, 0.99) * 1000, "max": worst * 1000, "samples": len(s.healthz_s),
            "failures": s.failures, "ok": ok}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    return f"{os.cpu_count()} CPUs ({model}), {mem / 1024:.0f} GiB RAM, {platform.system()} {platform.release()}"


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).resolve().parents[1])
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           check=False, cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    return (result.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty else "")


def markdown(rows: list[dict[str, Any]], command: str, exit_code: int | None) -> str:
    lines = [
        "# Red-team repeat: header, slow-connection and export attacks",
        "",
        f"Command: `{command}`; commit {commit()}; {machine()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. One `vigil run` with the default [http] settings "
        "(http.max_header_bytes 64 KiB, http.header_timeout 10 s, http.body_timeout 60 s, keep-alive 5 s), "
        "SQLite store, loopback only. RSS: VmRSS of the daemon; /healthz: one GET every 0.2 s on a kept-alive "
        f"connection during the attack. Targets: RSS under 1 GiB and /healthz under 100 ms. Daemon exit status "
        f"at the end: {exit_code}.",
        "",
        "| attack | what the attacker got | s | RSS before / max (MiB) | /healthz p50 / p99 / max (ms) "
        "| /healthz failed | target |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['attack']} | {r['outcome']} | {r['seconds']:.1f} | {r['rss_before']:.0f} / "
                     f"{r['rss_max']:.0f} | {r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f} "
                     f"| {r['failures']} of {r['samples'] + r['failures']} | {'met' if r['ok'] else 'MISSED'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-outliers", type=int, default=100_000, help="outliers seeded for the export "
                        "attack (0: skip it)")
    parser.add_argument("--head-mb", type=int, default=400, help="MB of header each of the 4 connections sends")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    command = "bench/redteam.py " + " ".join(sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory(prefix="vigil-redteam-") as tmp:
        daemon = start_daemon(Path(tmp), args.export_outliers)
        try:
            attacks: list[tuple[str, Callable[[], str]]] = [
                ("idle (baseline, 5 s)", lambda: (time.sleep(5), "nothing")[1]),
                (f"headers: 4 x {args.head_mb} MB", lambda: header_attack(daemon.port, head_mb=args.head_mb)),
                ("slow: 90 connections, a header line a second", lambda: slow_attack(daemon.port)),
            ]
            if args.export_outliers:
                attacks.append((f"exports: 4 x {args.export_outliers:,} outliers as CSV",
                                lambda: export_attack(daemon, args.export_outliers)))
            for name, attack in attacks:
                time.sleep(2)
                before = daemon.rss()
                started = time.monotonic()
                with Sampler(daemon) as samples:
                    outcome = attack()
                rows.append(row(name, outcome, time.monotonic() - started, samples, before))
                print(f"{name}: {outcome}; RSS max {rows[-1]['rss_max']:.0f} MiB, /healthz max "
                      f"{rows[-1]['max']:.1f} ms", file=sys.stderr)
        finally:
            exit_code = daemon.stop()
    text = markdown(rows, command, exit_code)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
