"""Throughput benchmark: Vigil's hot paths against bare baselines measured in the same run.

Run from the repository root:

    .venv/bin/python bench/throughput.py [--quick] [--parts 1,2,3,4,5] [--output bench/results/throughput.md]

1. scoring path (records -> frame -> preprocess -> forward -> threshold -> contributions, no database)
   of a 32- and a 256-feature detector, against a bare torch forward pass of the same network on the
   same encoded batch, and against the bare same work (the path's arithmetic from the same frame, in
   plain whole-array numpy and torch);
2. end to end (HTTP ingest -> stored -> scored -> outliers) of a real `vigil run` process on SQLite
   and on PostgreSQL, against a bare bulk insert of the same rows with the same driver
   (sqlite3 executemany in one transaction, psycopg COPY); p50/p99 of a 100-record POST;
3. training seconds per epoch on 1M x 32 against a bare torch loop over the same tensors and batch
   size, and against PyOD's AutoEncoder when `import pyod` works (`pip install -e '.[bench]'`);
4. with a CUDA device: epoch time on 10M x 64 with mixed precision, against the floor set by the
   model's FLOPs and bytes per epoch and the device's peak matmul and copy rates, measured here;
5. resident memory of a daemon with 10 detectors, idle and under load.

Every figure is printed as a Markdown table and the whole report is written to --output. PostgreSQL is
the server at VIGIL_BENCH_POSTGRES (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres);
the bench creates a throw-away database on it and drops it afterwards.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # set before torch starts its thread pool

import argparse
import contextlib
import gc
import http.client
import itertools
import json
import platform
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Only torch, numpy and the training library at import time: part 4 runs on a GPU machine that has nothing
# else (no SQLAlchemy, FastAPI or pydantic); the parts that need the daemon import it themselves.
from detector.allocator import DEFAULT_CACHE_MIB, tune_malloc  # noqa: E402  (the standard library only)
from tests.support.config import config_text as join_config  # noqa: E402  (the standard library only)
from tests.support.config import detector, heading  # noqa: E402
from tests.support.net import free_port  # noqa: E402  (the standard library only)
from training.loop import EpochStats, TrainSettings, train_autoencoder  # noqa: E402
from training.memory import native_bf16  # noqa: E402
from training.model import AutoencoderSpec, DenseAutoencoder  # noqa: E402

if TYPE_CHECKING:
    from detector.config import DetectorConfig
    from tests.support.daemon import BenchDaemon
    from training.fitted import FittedModel

DEFAULT_OUTPUT = REPO / "bench" / "results" / "throughput.md"
PG_ADMIN = os.environ.get("VIGIL_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TARGETS = {"scoring": 0.8, "end_to_end": 0.5, "training": 1.2}


# -- reporting -------------------------------------------------------------------------------------------

@dataclass
class Section:
    title: str
    intro: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.intro, "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines) + "\n"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def revision() -> str:
    """The commit measured, and whether the working tree's detector/, training/ or bench/ differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "detector", "training", "bench/throughput.py"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return commit + (" with uncommitted changes in detector/, training/ or bench/throughput.py" if dirty else "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text(encoding="utf-8").split("MemTotal:")[1].split()[0])
        ram = f"{kib / 2**20:.0f} GiB"
    gpu = (f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if torch.cuda.is_available()
           else "no GPU")
    bf16 = "with" if native_bf16() else "without"
    return (f"{cpu}, {os.cpu_count()} CPUs (os.cpu_count()), {bf16} bfloat16 hardware (AVX512-BF16 or AMX: the "
            f"neighbour search's screen runs on it), {ram} RAM; {platform.platform()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
            f"SQLite {sqlite3.sqlite_version}; GPU: {gpu}")


# -- shared set-up ---------------------------------------------------------------------------------------

def feature_names(n: int) -> list[str]:
    return [f"f{i}" for i in range(n)]


def synthetic(n: int, n_features: int, seed: int, anomaly_every: int = 0) -> np.ndarray:
    """n rows of n_features correlated numbers (4 factors plus noise), rounded to 3 decimals;
    every `anomaly_every`-th row is pushed far off (an obvious outlier)."""
    rng = np.random.default_rng(seed)
    loadings = np.random.default_rng(1234).normal(size=(4, n_features))
    x = rng.normal(size=(n, 4)) @ loadings + 0.3 * rng.normal(size=(n, n_features)) + 10.0
    if anomaly_every:
        x[anomaly_every - 1 :: anomaly_every] += 25.0
    return np.round(x, 3)


def config_text(state_dir: Path, detectors: dict[str, int], store_url: str | None = None, port: int = 0,
                scoring_interval: str = "5s", log_level: str = "warning", score: str | None = None) -> str:
    """A daemon config: one `http` detector per entry (name -> number of numeric features); `score` names
    one of VARIANTS (its settings go to each detector's [model] section)."""
    model = {"epochs": 3, "device": "cpu", **(VARIANTS[score][1] if score else {})}
    return join_config(
        heading(state_dir=state_dir, port=port, host="127.0.0.1", store_url=store_url, log_level=log_level,
                daemon={"malloc_cache_mib": MALLOC_CACHE_MIB}),
        *(detector(name, dict.fromkeys(feature_names(n), "numeric"), model=model, training={"interval": "24h"},
                   scoring={"interval": scoring_interval})
          for name, n in detectors.items()))


# `daemon.malloc_cache_mib` of the daemons started here and of this process (`--malloc-cache-mib`)
MALLOC_CACHE_MIB = DEFAULT_CACHE_MIB

TRAIN_ROWS = 50_000      # as many as the default memory remembers (and `training.max_records`)


def train_for(det: DetectorConfig, n_rows: int = TRAIN_ROWS, epochs: int = 3) -> FittedModel:
    """A model with the detector's settings, trained briefly on synthetic normal rows."""
    from detector.trainer import settings_for
    from training.fit import fit_model

    model, train, threshold = settings_for(det)
    train = TrainSettings(**{**train.to_dict(), "epochs": epochs, "device": "cpu"})
    n = len(det.features)
    frame = pd.DataFrame(synthetic(n_rows, n, seed=1), columns=feature_names(n))
    return fit_model(frame, det.feature_schema, model, train, threshold)


# -- part 1: scoring path --------------------------------------------------------------------------------

# the model variants measured: name -> (label, settings of each detector's [model] section)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "hybrid": ("default (hybrid score; approximate search, memory of up to 50,000 rows)", {}),
    "exact": ("hybrid, exact search, memory of up to 20,000 rows (the default until 2026-12-02)",
              {"neighbor_search": "exact", "memory_size": 20000}),
    "reconstruction": ("score = \"reconstruction\"", {"score": "reconstruction"}),
}
SCORES = tuple((name, label) for name, (label, _) in VARIANTS.items())                  # parts 1 and 2
MEMORY_SCORES = tuple((name, VARIANTS[name][0]) for name in ("hybrid", "reconstruction"))   # part 5


def part_scoring(quick: bool) -> Section:
    section = Section(
        "1. Scoring path (no database)",
        "One claimed batch of `scoring.batch_size` (5,000) records, 1 in 100 an outlier, for detectors of 32 and "
        f"256 numeric features with the default model settings (hidden {list(DEFAULTS.hidden)}, latent "
        f"{DEFAULTS.latent}; trained on {TRAIN_ROWS:,} rows), with the default `hybrid` score (reconstruction "
        "error, mean distance to the 5 nearest remembered training rows, local density; by default up to 50,000 "
        "rows, searched among the 4 k-means cells nearest to each record: `model.neighbor_search = "
        "\"approximate\"`), with the exact search over up to 20,000 rows (the default until 2026-12-02) and "
        "with `score = \"reconstruction\"`. Two Vigil figures: the issue's scoring path, "
        "`FittedModel.score` on the batch's frame (preprocess, forward, threshold, contributions, decoded expected "
        "values, out-of-distribution masks: the training library), and the daemon's whole batch, "
        "`Scorer._score_batch` on the records as the store hands them over (`PendingRecord`s with a dict of "
        "fields: records to frame, `FittedModel.score`, explanations of the flagged rows, one maintenance-window "
        "lookup in an empty SQLite store). Baseline: the same model's tensor work in bare torch under "
        "`torch.inference_mode()` on the same batch, already encoded as a float32 tensor: the network's forward "
        "pass, plus, for the hybrid score, the nearest-neighbour search over the model's memory as the "
        "memory runs it: the approximate search is the memory's own (`NeighborMemory._approximate`); the exact "
        "one, one distance matmul per cache-sized chunk of queries and the two-stage top-k (block minima, then "
        "a top-k over the best blocks), or, where the memory screens in bfloat16 (48 or more columns on a CPU "
        "with bfloat16 hardware), the memory's own search. A second baseline, the bare same work, starts where "
        "`FittedModel.score` starts, from the batch's frame, and does the path's arithmetic in plain whole-array "
        "numpy and torch: the frame's float64 block standardised, clipped and cast to float32, the out-of-range "
        "mask, the bare torch work above, each row's mean squared error, the rows above the threshold and their "
        "per-feature contributions (less than Vigil does: no combination of the hybrid components, no checks for "
        "non-finite values, no expected values). The issue's ratio is against the forward pass alone; the ratio "
        "to the bare same work is the share of Vigil's time that is the work itself rather than overhead around "
        "it. One torch thread (the daemon's default); medians of runs taken in turns.",
        ("detector", "score", "path", "Vigil (records/s)", "bare torch (records/s)", "ratio", "target", "result",
         "bare same work (records/s)", "ratio to that"))
    stages = Section("1b. Where the time of one batch goes", "Median milliseconds per 5,000-record batch.",
                     ("detector", "score", "records -> frame (detector)", "FittedModel.score (training library)",
                      "explanations and the rest (detector)", "whole batch", "bare torch", "bare same work"))
    repeats = 5 if quick else 11
    with tempfile.TemporaryDirectory(prefix="vigil-bench-scoring-") as tmp:
        for n_features in (32, 256):
            for score, label in SCORES:
                t = _scoring_times(Path(tmp) / f"{n_features}-{score}", n_features, score, quick, repeats)
                batch = 5000
                for path, key in (("`FittedModel.score` (issue's path)", "score"),
                                  ("`Scorer._score_batch` (daemon's batch)", "batch")):
                    ratio = t["bare"] / t[key]
                    section.rows.append((f"{n_features} features", label, path, fmt(batch / t[key]),
                                         fmt(batch / t["bare"]), f"{ratio:.3f}", f">= {TARGETS['scoring']}",
                                         verdict(ratio >= TARGETS["scoring"]), fmt(batch / t["same"]),
                                         f"{t['same'] / t[key]:.3f}"))
                stages.rows.append((f"{n_features} features", label, f"{t['frame'] * 1e3:.1f}",
                                    f"{t['score'] * 1e3:.1f}",
                                    f"{max(t['batch'] - t['frame'] - t['score'], 0.0) * 1e3:.1f}",
                                    f"{t['batch'] * 1e3:.1f}", f"{t['bare'] * 1e3:.2f}", f"{t['same'] * 1e3:.2f}"))
    section.notes.append(stages.markdown())
    return section


def _scoring_times(tmp: Path, n_features: int, score: str, quick: bool, repeats: int) -> dict[str, float]:
    from detector.config import load_config
    from detector.frames import records_frame
    from detector.scoring import ActiveModel, ModelCache, Scorer
    from detector.service import Vigil
    from detector.store.db import open_repository
    from detector.store.types import PendingRecord

    name = f"bench{n_features}"
    tmp.mkdir(parents=True)
    path = tmp / "config.toml"
    path.write_text(config_text(tmp / "state", {name: n_features}, score=score), encoding="utf-8")
    config = load_config(path)
    det = config.detectors[name]
    fitted = train_for(det, n_rows=5_000 if quick else TRAIN_ROWS)
    vigil = Vigil(config, open_repository(config.store_url), metrics=_metrics())
    scorer = Scorer(vigil, ModelCache(vigil))
    active = ActiveModel(1, 1, fitted)
    values = synthetic(det.scoring.batch_size, n_features, seed=2, anomaly_every=100)
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    names = feature_names(n_features)
    pending = [PendingRecord(i, ts + timedelta(seconds=i), f"host-{i % 8}", dict(zip(names, row, strict=True)))
               for i, row in enumerate(values.tolist())]
    frame = records_frame(pending, det.feature_schema)
    x = torch.from_numpy(fitted.preprocessor.transform(frame))
    network = fitted.network
    memory = getattr(fitted, "memory", None)

    def bare() -> None:
        bare_forward(network, x, memory)

    same = bare_same_work(fitted, frame)
    runs: dict[str, Callable[[], Any]] = {
        "bare": bare,
        "same": same,
        "batch": lambda: scorer._score_batch(name, active, pending),
        "frame": lambda: records_frame(pending, det.feature_schema),
        "score": lambda: fitted.score(frame),
    }
    gc.freeze()          # as `vigil run` does once it has loaded everything
    try:
        return interleaved_medians(runs, repeats)
    finally:
        gc.unfreeze()
        vigil.repo.dispose()


def bare_forward(network: torch.nn.Module, x: torch.Tensor, memory: Any) -> torch.Tensor:
    """The model's tensor work at its leanest, in bare torch: the network's forward pass and, for a hybrid
    model, the k-nearest search over its memory as the memory runs it: the approximate search is the
    memory's own (`NeighborMemory._approximate`), as is the exact one where it uses its bfloat16 screen (rows
    of 48 or more columns on a CPU with bfloat16 hardware, `NeighborMemory._nearest`); otherwise
    ||b||^2 - 2 q.b as one fused product per cache-sized chunk of queries into one reused buffer, the
    two-stage top-k of training.memory._select, ||q||^2 added to the k kept values, with nothing around it.
    Returns the network's reconstructions."""
    from training.memory import _QUERY_ELEMENTS, _select

    with torch.inference_mode():
        recon: torch.Tensor = network(x)
        if memory is None:
            return recon
        lists = memory._lists_built()
        if lists is not None:
            memory._approximate(lists, x, None)
            return recon
        if memory._screen_for(x) is not None:
            memory._nearest(x, None)
            return recon
        (bank_t, bank_sq), k = memory._plain_parts(), memory.k
        step = max(1, min(512, _QUERY_ELEMENTS // bank_t.shape[1]))
        buffer = torch.empty((min(step, len(x)), bank_t.shape[1]))     # reused: no page faults per chunk
        for xb in x.split(step):
            values, _ = _select(torch.addmm(bank_sq, xb, bank_t, alpha=-2.0, out=buffer[: len(xb)]), k)
            (values + xb.square().sum(dim=1, keepdim=True)).clamp_min(0.0).sqrt()
    return recon


def bare_same_work(fitted: FittedModel, frame: pd.DataFrame) -> Callable[[], Any]:
    """The scoring path's own arithmetic written plainly in numpy and torch, for an all-numeric model: from the
    frame's float64 block, the standardised, clipped float32 inputs and the out-of-range mask (whole-array
    numpy operations), `bare_forward` (the network, and the neighbour search of a hybrid model), each row's
    mean squared error, the rows above the threshold and their per-feature contributions (error shares times
    the error). Less than Vigil does (no hybrid combination of the components, no NaN or non-finite checks,
    no expected values), none of it in a Python loop per record."""
    from training.preprocess import NUMERIC_CLIP

    pre = fitted.preprocessor
    names, center, inverse = list(pre._plain_names), pre._plain_center, pre._plain_inverse
    below, above = fitted._range_bounds()
    network, memory, threshold = fitted.network, getattr(fitted, "memory", None), fitted.threshold.value

    columns = frame if list(frame.columns) == names else frame[names]      # the bench's frames: no copy

    def run() -> None:
        raw = columns.to_numpy(dtype=np.float64, copy=False)
        x = torch.from_numpy(np.clip((raw - center) * inverse, -NUMERIC_CLIP, NUMERIC_CLIP).astype(np.float32))
        (raw < below) | (raw > above)
        with torch.inference_mode():
            recon = bare_forward(network, x, memory)
            diff = (recon - x).square_()
            error = diff.mean(dim=1)
            flagged = (error > threshold).nonzero().squeeze(1)
            picked = diff[flagged]
            shares = picked / picked.sum(dim=1, keepdim=True)
            (shares.double() * error[flagged].double().unsqueeze(1)).numpy()

    return run


def interleaved_medians(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run in turns (so that load from elsewhere hits them alike)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _metrics() -> Any:
    from prometheus_client import CollectorRegistry

    from detector.metrics import Metrics

    return Metrics(CollectorRegistry())


# -- part 2: end to end over HTTP --------------------------------------------------------------------------

E2E_FEATURES = 32
POST_RECORDS = 1000


def bench_daemon(workdir: Path, detectors: dict[str, int], store_url: str | None, scoring_interval: str,
                 score: str | None = None) -> BenchDaemon:
    """A `vigil run` process on loopback (not started yet) on `config_text` in `workdir`."""
    from tests.support.daemon import BenchDaemon

    port = free_port()
    config = workdir / "config.toml"
    config.write_text(config_text(workdir / "state", detectors, store_url, port, scoring_interval, score=score),
                      encoding="utf-8")
    return BenchDaemon(config, port, workdir / "state", detector=next(iter(detectors)))


def seed_models(config_path: Path) -> dict[str, FittedModel]:
    """Train each detector's model and store it as its active one (before the daemon starts); the models by
    detector (detectors with as many features share one)."""
    from detector.config import load_config
    from detector.store.db import open_repository

    config = load_config(config_path)
    repo = open_repository(config.store_url)
    fitted: dict[str, FittedModel] = {}
    try:
        models: dict[int, FittedModel] = {}
        for name, det in config.detectors.items():
            n = len(det.features)
            model = models.get(n) or train_for(det)
            models[n] = model
            fitted[name] = model
            weights, meta = model.to_artifact()
            repo.save_model(name, weights, meta, model.threshold.value, TRAIN_ROWS, None, None)
    finally:
        repo.dispose()
    return fitted


def record_bodies(n_records: int, per_post: int, n_features: int, seed: int, start: datetime) -> list[bytes]:
    """JSON array bodies of `per_post` records: ts, host and n_features numbers; 1 in 500 is an outlier."""
    values = synthetic(n_records, n_features, seed, anomaly_every=500).tolist()
    names = feature_names(n_features)
    records = [{"ts": (start + timedelta(milliseconds=10 * i)).isoformat(), "host": f"web-{i % 8}",
                **dict(zip(names, row, strict=True))} for i, row in enumerate(values)]
    return [json.dumps(records[i : i + per_post]).encode() for i in range(0, n_records, per_post)]


def post_all(port: int, path: str, token: str, bodies: list[bytes], workers: int) -> list[float]:
    """POST every body (keep-alive connections, `workers` in flight); returns each POST's latency.

    Any answer but 200 with every record accepted stops the bench: its figures would be wrong.
    """
    work: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        work.put(body)
    latencies: list[float] = []
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not failures:
            try:
                body = work.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                failures.append(f"HTTP {response.status}: {answer[:300]!r}")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"ingest failed: {failures[0]}")
    return latencies


def count_scored(store_url: str, detector: str) -> tuple[int, int]:
    """(scored records, outliers) of a detector, read straight from the store."""
    query = (f"SELECT (SELECT count(*) FROM records WHERE detector = '{detector}' AND state = 'scored'), "
             f"(SELECT count(*) FROM outliers WHERE detector = '{detector}')")
    if store_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"), timeout=30)) as conn:
            scored, outliers = conn.execute(query).fetchone()
    else:
        import psycopg

        with psycopg.connect(store_url.replace("postgresql+psycopg", "postgresql")) as conn:
            row = conn.execute(query).fetchone()
            if row is None:
                raise RuntimeError("count query returned nothing")
            scored, outliers = row
    return int(scored), int(outliers)


@contextlib.contextmanager
def store(kind: str, tmp: Path) -> Iterator[str | None]:
    """A fresh store URL: a SQLite file, or a throw-away PostgreSQL database (None when unreachable)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'state' / 'vigil.db'}"
        return
    import sqlalchemy as sa


    name = f"vigil_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"PostgreSQL unreachable at {PG_ADMIN}: {exc.__class__.__name__}", file=sys.stderr)
        yield None
        return
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bare_insert(kind: str, url: str, bodies: list[bytes]) -> float:
    """Seconds to insert the same rows as pending records with the driver alone, in one transaction:
    sqlite3 executemany, or psycopg COPY (fields written as JSON by json.dumps / psycopg's Jsonb)."""
    from detector.store.db import open_engine, upgrade

    engine = open_engine(url)
    upgrade(engine)
    engine.dispose()
    records = [r for body in bodies for r in json.loads(body)]
    now = datetime.now(UTC)
    rows = []
    for r in records:
        ts = datetime.fromisoformat(r.pop("ts")).astimezone(UTC)
        key = r.pop("host")
        rows.append((ts, key, r))
    columns = "detector, ts, key, fields, source, ingested_at, state, is_outlier"
    if kind == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        text_rows = [(t.replace(tzinfo=None).isoformat(" ", timespec="microseconds"), k, f) for t, k, f in rows]
        ingested = now.replace(tzinfo=None).isoformat(" ", timespec="microseconds")
        started = time.perf_counter()
        with conn:
            conn.executemany(f"INSERT INTO records ({columns}) VALUES ('bare', ?, ?, ?, 'http', ?, 'pending', 0)",
                             [(t, k, json.dumps(f), ingested) for t, k, f in text_rows])
        elapsed = time.perf_counter() - started
        conn.close()
        return elapsed
    import psycopg
    from psycopg.types.json import Jsonb

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cursor, cursor.copy(f"COPY records ({columns}) FROM STDIN") as copy:
            for t, k, f in rows:
                copy.write_row(("bare", t, k, Jsonb(f), "http", now, "pending", False))
        return time.perf_counter() - started


def part_end_to_end(quick: bool) -> Section:
    n_records = 20_000 if quick else 100_000
    section = Section(
        "2. End to end: HTTP ingest -> stored -> scored -> outliers",
        f"A real `vigil run` process (uvicorn, one `http` detector with {E2E_FEATURES} numeric features, default "
        f"model settings, its model trained and stored before the start; records are scored on ingest, the "
        f"default, and the score job runs every 0.5 s for whatever waits) receives {n_records:,} records in POSTs "
        f"of {POST_RECORDS} records (JSON arrays built before the clock starts, 4 keep-alive connections in "
        f"flight, loopback), in {E2E_ROUNDS} rounds of {n_records // E2E_ROUNDS:,}. Sustained rate of a round: "
        "records / (last record scored - first POST sent), the store polled every 0.1 s. Baseline, after each "
        "round: the same rows inserted as pending records into a table of the same schema with the same driver, "
        "from Python dicts, in one transaction (SQLite: sqlite3 `executemany` with `json.dumps`; PostgreSQL: "
        "psycopg `COPY` with `Jsonb`). Rates are medians over the rounds; the ratio is the median of the "
        "rounds' ratios (their range in brackets: this machine is shared, and a round and its baseline see the "
        "same load). A second baseline adds the model's bare tensor work on one "
        "round's rows, already encoded (`bare_forward` of part 1 over 1000-row batches, one thread), to the "
        "median bare insert: the insert and the arithmetic done back to back with nothing around them. "
        "Latency: 100-record POSTs, one at a time, "
        "20 per second, afterwards (client-side, answered 200). The client runs on the same machine (and, for "
        "PostgreSQL, so does the server).",
        ("store", "score", "Vigil end to end (records/s)", "bare bulk insert (records/s)", "ratio", "target",
         "result", "bare insert + bare model arithmetic (records/s)", "ratio to that",
         "all POSTs answered (records/s)", "100-record POST p50 / p99 (ms)", "outliers stored"))
    for kind in ("sqlite", "postgresql"):
        for score, label in SCORES:
            with tempfile.TemporaryDirectory(prefix=f"vigil-bench-e2e-{kind}-") as tmp_name:
                tmp = Path(tmp_name)
                with store(kind, tmp) as url:
                    if url is None:
                        section.rows.append((kind, label, "PostgreSQL unreachable: skipped", "", "", "", "", "",
                                             "", "", "", ""))
                        continue
                    section.rows.append((kind, label, *_end_to_end(kind, url, tmp, n_records, quick, score)))
    return section


E2E_ROUNDS = 3


def _end_to_end(kind: str, url: str, tmp: Path, n_records: int, quick: bool, score: str) -> tuple[str, ...]:
    daemon = bench_daemon(tmp, {"bench": E2E_FEATURES}, url, scoring_interval="500ms", score=score)
    fitted = seed_models(daemon.config)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    per_round = n_records // E2E_ROUNDS
    rounds = [record_bodies(per_round, POST_RECORDS, E2E_FEATURES, seed=3 + r, start=start + timedelta(hours=r))
              for r in range(E2E_ROUNDS)]
    latency_bodies = record_bodies(100 * (50 if quick else 200), 100, E2E_FEATURES, seed=4,
                                   start=start + timedelta(days=1))
    vigil_rates: list[float] = []
    ingest_rates: list[float] = []
    bare_rates: list[float] = []
    with store(kind, tmp / "bare") as bare_url:
        if bare_url is None:
            raise SystemExit(f"{kind}: the store for the baseline is unreachable")
        daemon.start()
        try:
            for r, bodies in enumerate(rounds):
                # one round: the daemon takes per_round records, then the baseline inserts the same rows, so
                # that each pair of figures sees the same load from elsewhere on this shared machine
                t0 = time.perf_counter()
                post_all(daemon.port, "/v1/detectors/bench/records", daemon.token, bodies, workers=4)
                t_ingested = time.perf_counter() - t0
                deadline = time.monotonic() + 600
                scored = outliers = 0
                while time.monotonic() < deadline:
                    scored, outliers = count_scored(url, "bench")
                    if scored >= (r + 1) * per_round:
                        break
                    time.sleep(0.1)
                t_scored = time.perf_counter() - t0
                if scored < (r + 1) * per_round:
                    raise SystemExit(f"{kind}: only {scored} of {(r + 1) * per_round} records scored within 600 s")
                vigil_rates.append(per_round / t_scored)
                ingest_rates.append(per_round / t_ingested)
                bare_rates.append(per_round / bare_insert(kind, bare_url, bodies))
            latencies = []
            for body in latency_bodies:
                started = time.perf_counter()
                latencies += post_all(daemon.port, "/v1/detectors/bench/records", daemon.token, [body], workers=1)
                time.sleep(max(0.0, 0.05 - (time.perf_counter() - started)))
        finally:
            code = daemon.stop()
            if code != 0:
                print(f"{kind}: daemon exit status {code}\n{daemon.tail()}", file=sys.stderr)
    arithmetic_s = bare_arithmetic(fitted["bench"], rounds[0])
    ratios = [v / b for v, b in zip(vigil_rates, bare_rates, strict=True)]
    ratio = statistics.median(ratios)
    vigil_rate, bare_rate = statistics.median(vigil_rates), statistics.median(bare_rates)
    both_rate = per_round / (per_round / bare_rate + arithmetic_s)
    ms = np.array(latencies) * 1000
    return (fmt(vigil_rate), fmt(bare_rate), f"{ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
            f">= {TARGETS['end_to_end']}", verdict(ratio >= TARGETS["end_to_end"]), fmt(both_rate),
            f"{vigil_rate / both_rate:.2f}", fmt(statistics.median(ingest_rates)),
            f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 99):.1f}", fmt(outliers))


def bare_arithmetic(fitted: FittedModel, bodies: list[bytes]) -> float:
    """Seconds of the model's bare tensor work (`bare_forward`) over the same records, one POST's worth of
    rows at a time, on rows already encoded (one torch thread, as the daemon)."""
    names = fitted.schema.names
    frame = pd.DataFrame([r for body in bodies for r in json.loads(body)])[names]
    x = torch.from_numpy(fitted.inputs(frame))
    memory = fitted.memory
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bare_forward(fitted.network, x[:POST_RECORDS], memory)      # warm-up
        started = time.perf_counter()
        for xb in x.split(POST_RECORDS):
            bare_forward(fitted.network, xb, memory)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)


# -- part 3: training -------------------------------------------------------------------------------------

def _bare_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x_train: torch.Tensor,
                x_val: torch.Tensor, batch_size: int, generator: torch.Generator,
                autocast: torch.dtype | None = None) -> None:
    """One epoch the plain way: shuffled minibatches, MSE, Adam; then the validation loss."""
    model.train()
    order = torch.randperm(len(x_train), device=x_train.device, generator=generator)
    device_type = x_train.device.type
    for start in range(0, len(x_train), batch_size):
        xb = x_train[order[start : start + batch_size]]
        with torch.autocast(device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = F.mse_loss(model(xb), xb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    model.eval()
    total = torch.zeros((), device=x_val.device)
    with torch.inference_mode(), torch.autocast(device_type, dtype=autocast or torch.float32,
                                                 enabled=autocast is not None):
        for start in range(0, len(x_val), batch_size):
            xb = x_val[start : start + batch_size]
            total += F.mse_loss(model(xb), xb).float() * len(xb)
    float(total.item())


def bare_epochs(x: np.ndarray, spec: AutoencoderSpec, settings: TrainSettings, device: torch.device,
                autocast: torch.dtype | None = None) -> list[float]:
    """Seconds of each epoch of the bare loop over the same split, tensors on `device`, same batch size."""
    n_val = round(len(x) * settings.validation_fraction)
    order = np.random.default_rng(settings.seed).permutation(len(x))
    x_train = torch.from_numpy(x[np.sort(order[n_val:])]).to(device)
    x_val = torch.from_numpy(x[np.sort(order[:n_val])]).to(device)
    torch.manual_seed(settings.seed)
    model = DenseAutoencoder(spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    times = []
    for _ in range(settings.epochs):
        _sync(device)
        started = time.perf_counter()
        _bare_epoch(model, optimizer, x_train, x_val, settings.batch_size, generator, autocast)
        _sync(device)
        times.append(time.perf_counter() - started)
    return times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def vigil_epochs(x: np.ndarray, spec: AutoencoderSpec, settings: TrainSettings,
                 autocast: torch.dtype | None = None) -> tuple[list[float], float]:
    """Seconds of each epoch of `train_autoencoder` (its own EpochStats), and of the whole call."""
    stats: list[EpochStats] = []
    started = time.perf_counter()
    with torch.autocast("cuda", dtype=autocast or torch.float32, enabled=autocast is not None):
        train_autoencoder(x, spec, settings, stats.append)
    return [s.seconds for s in stats], time.perf_counter() - started


# detector.config's ModelConfig defaults, for where the daemon's packages are not installed (the GPU machine);
# part 3 checks that they still agree with the config
DEFAULTS = AutoencoderSpec(n_inputs=1, hidden=(64, 32), latent=8)


def default_model(n_features: int) -> tuple[AutoencoderSpec, TrainSettings]:
    """The network and training settings of a detector of n_features numeric features with the default config
    (read from detector.config; DEFAULTS where the daemon's packages are not installed)."""
    try:
        from detector.config import DetectorConfig
        from detector.trainer import settings_for
    except ImportError:       # the GPU machine: torch and numpy only
        return AutoencoderSpec(n_inputs=n_features, hidden=DEFAULTS.hidden, latent=DEFAULTS.latent), TrainSettings()
    det = DetectorConfig.model_validate({"source": {"type": "http"},
                                         "features": {name: "numeric" for name in feature_names(n_features)}})
    model_settings, train, _ = settings_for(det)
    return AutoencoderSpec(n_inputs=n_features, hidden=model_settings.hidden, latent=model_settings.latent), train


TRAINING_TURNS = {True: 1, False: 4}    # runs of each trainer (quick, full): the epochs of one run drift together


def part_training(quick: bool) -> Section:
    n_rows, n_features, epochs = (100_000, 32, 2) if quick else (1_000_000, 32, 3)
    spec, train = default_model(n_features)
    if (spec.hidden, spec.latent) != (DEFAULTS.hidden, DEFAULTS.latent):
        print(f"warning: bench DEFAULTS {DEFAULTS.hidden}/{DEFAULTS.latent} differ from the config's "
              f"{spec.hidden}/{spec.latent}: part 4 on a machine without the daemon's packages would use "
              "another model", file=sys.stderr)
    settings = TrainSettings(**{**train.to_dict(), "epochs": epochs, "device": "cpu", "patience": epochs + 1,
                                "min_delta": 0.0})
    x = synthetic(n_rows, n_features, seed=5).astype(np.float32)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    section = Section(
        "3. Training",
        f"{n_rows:,} x {n_features} float32 rows (already encoded), the detector's default model (hidden "
        f"{list(spec.hidden)}, latent {spec.latent}), batch size {settings.batch_size}, Adam, MSE, 80/20 "
        f"split, {epochs} epochs, CPU with one torch thread. Vigil: `training.loop.train_autoencoder`, "
        "seconds per epoch from its own epoch statistics (training pass plus validation loss). Baseline: a bare "
        "torch loop over the same split tensors, same batch size, same per-epoch validation pass. Each runs "
        f"{TRAINING_TURNS[quick]} time(s), in turns (Vigil first, then the baseline first, and so on); median "
        "epoch.",
        ("trainer", "seconds per epoch", "bare loop (s)", "ratio (lower is better)", "target", "result"))
    vigil_times: list[float] = []
    bare_times: list[float] = []
    wholes: list[float] = []
    for turn in range(TRAINING_TURNS[quick]):   # in turns, each order alike: load from elsewhere hits both alike
        for trainer in (("vigil", "bare") if turn % 2 == 0 else ("bare", "vigil")):
            if trainer == "vigil":
                times, whole = vigil_epochs(x, spec, settings)
                vigil_times += times
                wholes.append(whole)
            else:
                bare_times += bare_epochs(x, spec, settings, torch.device("cpu"))
    whole = statistics.median(wholes)
    v, b = statistics.median(vigil_times), statistics.median(bare_times)
    section.rows.append(("Vigil train_autoencoder", f"{v:.2f}", f"{b:.2f}", f"{v / b:.2f}",
                         f"<= {TARGETS['training']}", verdict(v / b <= TARGETS["training"])))
    section.notes.append(f"- Whole `train_autoencoder` call (median): {whole:.1f} s for {epochs} epochs (split, "
                         "copies, "
                         "final validation scoring included). Epoch times: Vigil "
                         + ", ".join(f"{t:.2f}" for t in vigil_times) + "; bare "
                         + ", ".join(f"{t:.2f}" for t in bare_times) + ".")
    section.rows.append(_pyod_row(x, spec, settings, b))
    return section


def _pyod_row(x: np.ndarray, spec: AutoencoderSpec, settings: TrainSettings, bare_s: float) -> tuple[str, ...]:
    try:
        from pyod.models.auto_encoder import AutoEncoder
    except ImportError:
        return ("PyOD AutoEncoder", "not installed (`pip install -e '.[bench]'`): skipped", "", "", "", "")
    import pyod

    detector = AutoEncoder(hidden_neuron_list=[*spec.hidden, spec.latent], hidden_activation_name="relu",
                           batch_norm=False, dropout_rate=0.0, epoch_num=1, batch_size=settings.batch_size,
                           lr=settings.learning_rate, optimizer_params={"weight_decay": 0.0}, preprocessing=False,
                           device=torch.device("cpu"), verbose=0, random_state=settings.seed)
    n_train = len(x) - round(len(x) * settings.validation_fraction)
    x_train = x[:n_train].astype(np.float64)
    started = time.perf_counter()
    detector.fit(x_train)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    detector.decision_function(x_train)
    epoch = fit_s - (time.perf_counter() - started)
    return (f"PyOD {pyod.__version__} AutoEncoder, 1 epoch (same layers and batch size; its closing scoring pass "
            "subtracted)", f"{epoch:.2f}", f"{bare_s:.2f}", f"{epoch / bare_s:.2f}", "", "for reference")


# -- part 4: GPU ------------------------------------------------------------------------------------------

def peak_matmul_tflops(dtype: torch.dtype, device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e12


def peak_copy_gbs(device: torch.device, n_bytes: int = 2 * 2**30, repeats: int = 20) -> float:
    """Device memory bandwidth: bytes read plus bytes written per second by a large tensor copy."""
    src = torch.empty(n_bytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    return 2 * n_bytes * repeats / (time.perf_counter() - started) / 1e9


def epoch_flops(spec: AutoencoderSpec, n_train: int, n_val: int) -> float:
    """Matmul FLOPs of one epoch: forward + backward (3x forward) on the training rows, forward on validation."""
    sizes = [spec.n_inputs, *spec.hidden, spec.latent]
    forward_per_row = 2 * 2 * sum(a * b for a, b in itertools.pairwise(sizes))
    return forward_per_row * (3 * n_train + n_val)


def part_gpu(quick: bool) -> Section:
    if not torch.cuda.is_available():
        section = Section("4. GPU", "Mixed-precision training epoch on a CUDA device.", ("measure", "value"))
        section.rows.append(("no CUDA device: skipped", "-"))
        if (REPO / "bench" / "results" / "throughput-h100.md").exists():
            section.notes.append("- A run of this part on an H100: [throughput-h100.md](throughput-h100.md).")
        return section
    device = torch.device("cuda")
    n_rows, n_features = (1_000_000, 64) if quick else (10_000_000, 64)
    spec, train = default_model(n_features)
    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    rng = torch.Generator(device=device).manual_seed(6)
    x = torch.randn(n_rows, n_features, device=device, generator=rng).cpu().numpy()
    n_val = round(n_rows * train.validation_fraction)
    n_train = n_rows - n_val
    flops = epoch_flops(spec, n_train, n_val)
    bytes_per_epoch = n_rows * n_features * 4          # every input row read once (fp32)
    tflops = peak_matmul_tflops(amp, device)
    tflops_fp32 = peak_matmul_tflops(torch.float32, device)
    gbs = peak_copy_gbs(device)
    floor_s = max(flops / (tflops * 1e12), bytes_per_epoch / (gbs * 1e9))
    section = Section(
        "4. GPU",
        f"{torch.cuda.get_device_name(device)}: {n_rows:,} x {n_features} float32 rows, the detector's default "
        f"model (hidden {list(spec.hidden)}, latent {spec.latent}), Adam, MSE, 80/20 split, `device = \"auto\"` "
        f"(resolves to cuda). Mixed precision: {str(amp).removeprefix('torch.')} autocast (the training library "
        "has no mixed-precision setting, so the bench runs `train_autoencoder` inside `torch.autocast`). Floor: "
        f"max(epoch FLOPs / measured peak {str(amp).removeprefix('torch.')} matmul rate, input bytes per epoch / "
        "measured copy bandwidth), both measured in this run. Median epoch (1 epoch per run at the default batch "
        "size on the full set, else 2).",
        ("trainer", "batch size", "precision", "seconds per epoch", "floor (s)", "x floor", "bare loop (s)",
         "ratio to bare"))
    section.notes.append(
        f"- Device peaks measured here: {amp} matmul {tflops:.0f} TFLOP/s, fp32 matmul {tflops_fp32:.0f} "
        f"TFLOP/s (8192^3), copy {gbs:.0f} GB/s (read + write). Epoch: {flops / 1e9:.0f} GFLOP, "
        f"{bytes_per_epoch / 1e9:.2f} GB of input: floor {floor_s * 1000:.2f} ms.")
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)     # the CPU side of the call (final validation scoring)
    for batch_size in (train.batch_size, 65_536):
        for precision in (None, amp):
            # the default batch size launches ~40,000 steps per epoch: one epoch each at full size
            epochs = 1 if batch_size == train.batch_size and not quick else 2
            settings = TrainSettings(**{**train.to_dict(), "epochs": epochs, "batch_size": batch_size,
                                        "device": "auto", "patience": 3, "min_delta": 0.0})
            times, whole = vigil_epochs(x, spec, settings, autocast=precision)
            bare = bare_epochs(x, spec, settings, device, autocast=precision)
            v, b = statistics.median(times), statistics.median(bare)
            label = "fp32" if precision is None else str(precision).removeprefix("torch.")
            section.rows.append(("Vigil train_autoencoder", str(batch_size), label, f"{v:.3f}", f"{floor_s:.4f}",
                                 fmt(v / floor_s), f"{b:.3f}", f"{v / b:.2f}"))
            section.notes.append(f"- batch {batch_size}, {label}: whole `train_autoencoder` call {whole:.1f} s "
                                 "(copies to the device and the final validation scoring on the CPU included).")
            gc.collect()
            torch.cuda.empty_cache()
    torch.set_num_threads(threads)
    return section


# -- part 5: memory ---------------------------------------------------------------------------------------

def part_memory(quick: bool) -> Section:
    load_s = 10.0 if quick else 30.0
    n_detectors, n_features = 10, 32
    section = Section(
        "5. Memory",
        f"Resident set size (VmRSS) of one `vigil run` process with {n_detectors} `http` detectors of {n_features} "
        f"numeric features each (SQLite store, models trained and stored before the start), with the default "
        f"`hybrid` score and with `score = \"reconstruction\"`. Idle: 15 s after the start, every model loaded. "
        f"Under load: {load_s:.0f} s of 100-record POSTs to all {n_detectors} detectors in turn, 2 connections in "
        "flight, scoring every 1 s; sampled every 0.25 s.",
        ("state", *(label for _, label in MEMORY_SCORES)))
    columns = [_memory_run(score, load_s, n_detectors, n_features) for score, _ in MEMORY_SCORES]
    for i, state in enumerate(("at start (HTTP answering)", "idle, models loaded", "under load, max",
                               "under load, median", "3 s after the load", "records sent")):
        section.rows.append((state, *(column[i] for column in columns)))
    return section


def _memory_run(score: str, load_s: float, n_detectors: int, n_features: int) -> list[str]:
    names = {f"det{i}": n_features for i in range(n_detectors)}
    samples: list[int] = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-memory-") as tmp_name:
        daemon = bench_daemon(Path(tmp_name), names, None, scoring_interval="1s", score=score)
        seed_models(daemon.config)
        daemon.start()
        try:
            rss_start = daemon.rss()
            time.sleep(15.0)
            rss_idle = daemon.rss()
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    samples.append(daemon.rss())
                    time.sleep(0.25)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            sent = day = 0
            while time.monotonic() - started < load_s:
                bodies = record_bodies(100 * 2 * n_detectors, 100, n_features, seed=7 + day,
                                       start=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day))
                for i, name in enumerate(names):
                    post_all(daemon.port, f"/v1/detectors/{name}/records", daemon.token,
                             bodies[2 * i : 2 * i + 2], workers=2)
                    sent += 200
                day += 1
            time.sleep(3.0)
            stop.set()
            sampler.join()
            rss_after = daemon.rss()
        finally:
            daemon.stop()
    mib = 2**20
    return [fmt(rss_start / mib), fmt(rss_idle / mib), fmt(max(samples) / mib),
            fmt(statistics.median(samples) / mib), fmt(rss_after / mib), f"{sent:,} in {load_s:.0f} s"]


# -- main -------------------------------------------------------------------------------------------------

PARTS: dict[int, Callable[[bool], Section]] = {1: part_scoring, 2: part_end_to_end, 3: part_training,
                                               4: part_gpu, 5: part_memory}


def main() -> None:
    global MALLOC_CACHE_MIB
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for iterating")
    parser.add_argument("--parts", default="1,2,3,4,5", help="comma-separated part numbers (default: all)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown report to write")
    parser.add_argument("--malloc-cache-mib", type=int, default=MALLOC_CACHE_MIB,
                        help="daemon.malloc_cache_mib for this process and the daemons it starts (0: glibc's "
                             "defaults; default: the daemon's default)")
    args = parser.parse_args()
    parts = [int(p) for p in args.parts.split(",") if p.strip()]
    MALLOC_CACHE_MIB = args.malloc_cache_mib
    tuned = tune_malloc(MALLOC_CACHE_MIB)          # as `vigil run` does, for the bare baselines alike
    torch.set_num_threads(1)
    started = time.perf_counter()
    sections = []
    for number in parts:
        print(f"part {number}...", file=sys.stderr, flush=True)
        part_started = time.perf_counter()
        load_before = os.getloadavg()[0]
        section = PARTS[number](args.quick)
        section.notes.append(f"\n(part {number} took {time.perf_counter() - part_started:.0f} s; 1-minute load average "
                             f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs)")
        print(section.markdown(), flush=True)
        sections.append(section)
    command = " ".join(["$", ".venv/bin/python", "bench/throughput.py", *sys.argv[1:]])
    report = [
        "# Throughput benchmark", "",
        f"Command: `{command.removeprefix('$ ')}` ({time.perf_counter() - started:.0f} s, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC){' -- QUICK sizes, not the committed run' if args.quick else ''}.",
        "", f"Commit: {revision()}.", "", f"Machine: {machine()}.", "",
        f"Allocator: `daemon.malloc_cache_mib = {MALLOC_CACHE_MIB}` in this process (the bare baselines' too) "
        f"and in the daemons it starts ({'set' if tuned else 'not set: glibc defaults or the environment'}; see "
        "README, Performance).", "",
        *[s.markdown() for s in sections],
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(report), encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
