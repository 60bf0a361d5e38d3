"""A memory of training rows: distance to the nearest remembered normal rows, and local density.

The autoencoder's reconstruction error sees what the network failed to learn; distances to the
nearest remembered rows see how unusual a row is among the normal ones it was trained on. On the
20 ODDS core sets (bench/quality.py) the combination beats either alone.
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from training.choices import SEARCHES, Search

__all__ = ["NeighborMemory", "NeighborResult", "nearest_distance", "wide_positions"]

logger = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 1 << 24   # distances computed per chunk in nearest_distance (64 MiB of float32)
_QUERY_ELEMENTS = 1 << 21   # distances per chunk of queries in the memory's search (8 MiB: stays in cache)
_BLOCK = 128                # bank columns per block in the two-stage selection
_GROUP = 16                 # bank rows per group in the bfloat16 screen (see _Screen)
_SUPER = 8                  # groups per set in the screen's first upper bound
_SCREEN_MIN_DIM = 48        # narrower rows: the float32 product is cheap, the screen gains nothing (32: even)
_BF16_UNIT = 2.0 ** -8      # unit roundoff of bfloat16 (8 significant bits)
_SCREEN_CHECK_ROWS = 64     # bank rows whose screened products are checked against float64 once per memory
_LIST_ROWS = 640            # rows per cell of the approximate search's lists, on average (see _Lists)
_LIST_PROBES = 4            # cells searched per query row
_LISTS_MIN = 16             # memories of fewer cells' worth of rows (about 10,000): searched exactly
_LIST_BLOCK = 32            # positions per block in the approximate search's selection
_LIST_ELEMENTS = 1 << 22    # candidate distances per chunk of queries in the approximate search (16 MiB)
_KMEANS_ROUNDS = 10         # Lloyd iterations per k-means of the cells


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), where torch's bfloat16
    product runs about five times as fast as the float32 one. Elsewhere bfloat16 is emulated and slower."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


class NeighborResult:
    """Per query row: mean distance to its k nearest remembered rows, its local density ratio (its
    k-th distance over the mean k-th distance of those neighbours, as in LOF), those rows [n, k] (bank
    indices, nearest first), and their mean row [n, d] (what the row "should" look like, for
    explanations; computed on first use)."""

    __slots__ = ("_bank", "_mean", "density", "distance", "rows")

    def __init__(self, distance: torch.Tensor, density: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor) -> None:
        self.distance = distance
        self.density = density
        self.rows = rows
        self._bank = bank
        self._mean: torch.Tensor | None = None

    @property
    def neighbour_mean(self) -> torch.Tensor:
        if self._mean is None:
            self._mean = self._bank[self.rows].mean(dim=1)
        return self._mean


_HASH_SEED = 20_261_207     # own_rows' projection: any fixed direction will do


class NeighborMemory:
    """Up to `size` encoded training rows `bank` [m, d] and each one's leave-one-out k-th distance.

    `search` is how `query` finds a row's k nearest remembered rows. "exact": among all of them.
    "approximate": among the rows of the _LIST_PROBES cells (k-means cells of about _LIST_ROWS rows,
    `_Lists`) whose centres lie nearest to the row, an eighth of a 20,000-row memory, about a twentieth of
    a 50,000-row one. Now and then a true neighbour is missed, so a distance comes out too large, never too
    small; the bank's own leave-one-out k-th distances are found the same way. Memories of fewer than
    _LISTS_MIN cells' worth of rows are searched exactly either way.
    """

    def __init__(self, bank: torch.Tensor, kdist: torch.Tensor, k: int, search: Search = "exact") -> None:
        if bank.ndim != 2 or kdist.shape != (bank.shape[0],):
            raise ValueError(f"bank must be [m, d] and kdist [m], got {tuple(bank.shape)} and {tuple(kdist.shape)}")
        if not 1 <= k < bank.shape[0]:
            raise ValueError(f"k must be in [1, {bank.shape[0] - 1}] for a bank of {bank.shape[0]} rows, got {k}")
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        self.bank = bank.float().contiguous()
        self.kdist = kdist.float().contiguous()
        self.k = k
        self.search: Search = search
        self._lists: _Lists | bool | None = None          # built on the first approximate query; False: too few rows
        self._plain: tuple[torch.Tensor, torch.Tensor] | None = None   # bank.T and ||b||^2, made on first use
        self._screen: _Screen | bool | None = None        # built on the first CPU query; False: not usable
        self._hashes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None    # own_rows' lookup
        self._wide: tuple[int, torch.Tensor, torch.Tensor] | None = None    # wide_distance's rows and lookup
        # Rows with k or more exact twins have a k-th distance of 0 (an idle host reporting the same
        # values): the density ratio divides by at least a tenth of the typical k-th distance instead.
        positive = self.kdist[self.kdist > 0]
        self._kdist_floor = 0.1 * float(positive.median()) if positive.numel() else 1e-12

    @classmethod
    def build(
        cls, x: npt.NDArray[np.float32], k: int, size: int, seed: int, search: Search = "exact",
    ) -> tuple[NeighborMemory, npt.NDArray[np.intp]]:
        """Remember a seeded sample of at most `size` rows of `x`; returns the memory and their row indices."""
        n = len(x)
        k = max(1, min(k, n - 2))
        rows = np.arange(n) if n <= size else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        bank = torch.from_numpy(np.ascontiguousarray(x[rows], dtype=np.float32))
        memory = cls(bank, torch.zeros(len(rows)), k, search)
        lists = memory._lists_built()
        with torch.inference_mode():     # leave-one-out: each remembered row without itself, found as `search` says
            if lists is not None:
                dist, _ = memory._approximate(lists, bank, torch.arange(len(rows)))
            else:
                dist, _ = memory._nearest(bank, torch.arange(len(rows)))
        built = cls(bank, dist[:, -1].contiguous(), k, search)
        built._lists = memory._lists          # the same bank: the same cells
        return built, rows

    def to(self, device: torch.device) -> NeighborMemory:
        if self.bank.device == device:
            return self
        moved = NeighborMemory(self.bank.to(device), self.kdist.to(device), self.k, self.search)
        lists = self._lists_built()
        moved._lists = lists.to(device) if lists is not None else False
        moved._hashes = self._hash_parts()          # the same rows: not projected again for every batch
        return moved

    def prepare(self) -> None:
        """Make what `query` needs now (the approximate search's cells), not at the first query."""
        self._lists_built()

    def own_rows(self, q: torch.Tensor) -> torch.Tensor:
        """[n]: for each query row, a bank row exactly equal to it (-1: none), to leave out of its query.

        A record the memory holds (the window's records scored by the model trained on them: the first
        model scores its own backfill) would find itself at distance 0. Left out, it is scored as the
        threshold's calibration rows were, against the memory without itself; a new record equal to a
        remembered one is scored the same way. Found by a random projection of each row (one product and a
        binary search), every candidate checked column by column.
        """
        direction, sorted_hashes, order = self._hash_parts()
        qh = q.detach().cpu().double() @ direction
        at = torch.searchsorted(sorted_hashes, qh).clamp_max(len(sorted_hashes) - 1)
        candidate = order[at].to(q.device)
        same = (self.bank.to(q.device)[candidate] == q.detach().float()).all(dim=1)     # checked where q lies
        equal = (sorted_hashes[at] == qh).to(q.device) & same
        return torch.where(equal, candidate, torch.full_like(candidate, -1))

    def _hash_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """own_rows' lookup, on the CPU: the projection direction, the bank rows' sorted projections, their order.
        Made once per bank (a copy of the memory on another device shares it)."""
        if self._hashes is None:
            generator = torch.Generator().manual_seed(_HASH_SEED)
            direction = torch.randn(self.bank.shape[1], generator=generator, dtype=torch.float64)
            hashes = self.bank.cpu().double() @ direction
            order = torch.argsort(hashes, stable=True)
            self._hashes = (direction, hashes[order].contiguous(), order)
        return self._hashes

    def _plain_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank transposed [d, m] and its rows' squared norms [m], for the exact search's product."""
        if self._plain is None:
            self._plain = (self.bank.T.contiguous(), self.bank.square().sum(dim=1))
        return self._plain

    def _lists_built(self) -> _Lists | None:
        """The cells of the approximate search (built on the first call, on the CPU, so that every device
        searches the same cells); None for an exact memory or one too small for cells."""
        if self.search != "approximate":
            return None
        if self._lists is None:
            # made before it is set: a query in another thread meanwhile builds its own (the same cells)
            # instead of searching exactly
            built: _Lists | bool = False
            if self.bank.shape[0] >= _LISTS_MIN * _LIST_ROWS:
                bank = self.bank.cpu()
                lists = _Lists(bank, _cells(bank, _LIST_ROWS, 2 * self.k))
                if lists.usable(self.k):
                    built = lists.to(self.bank.device)
            self._lists = built
        return self._lists if isinstance(self._lists, _Lists) else None

    def _screen_for(self, q: torch.Tensor) -> _Screen | None:
        """The bfloat16 screen of this bank, for queries on the CPU of a CPU with bfloat16 hardware and rows
        wide enough to gain from it; None otherwise (and when the screen failed its check)."""
        if q.device.type != "cpu" or self.bank.device.type != "cpu" or self.bank.shape[1] < _SCREEN_MIN_DIM:
            return None
        if -(-self.bank.shape[0] // _GROUP) < 8 * self.k or not native_bf16():
            return None
        if self._screen is None:
            screen = _Screen(self.bank)
            self._screen = screen if screen.check(self.bank) else False
        return self._screen if isinstance(self._screen, _Screen) else None

    def _nearest(self, q: torch.Tensor, exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted distances [n, k] and bank indices [n, k] of each query row's k nearest rows (exact).

        `exclude` [n] names a bank row to skip per query (its own, for leave-one-out), -1 for none.
        The rows are found chunk by chunk of queries (small enough to stay in the CPU's cache): with the
        bfloat16 screen where it runs (`_Screen`), else from ||b||^2 - 2 q.b (one float32 matrix product) and
        a two-stage selection (`_select`). Either way the distances of the rows found are then computed
        directly, as ||q - b||, so both give the same numbers for the same rows.
        """
        screen = self._screen_for(q)
        bank = self.bank if self.bank.device == q.device else self.bank.to(q.device)
        width = screen.width if screen is not None else self.bank.shape[0]
        step = max(1, min(512, _QUERY_ELEMENTS // max(1, width)))
        rows = min(step, len(q))
        # one buffer for every chunk: a fresh 8 MiB block per chunk costs page faults (about a third more
        # time on one core than the product itself needs)
        buffer = torch.empty((rows, width), device=q.device)
        screened = torch.empty((rows, width), dtype=torch.bfloat16) if screen is not None else None
        plain: tuple[torch.Tensor, torch.Tensor] | None = None
        found = []
        for start in range(0, len(q), step):
            qb = q[start : start + step]
            ex = exclude[start : start + step].to(q.device) if exclude is not None else None
            idx = None
            if screen is not None and screened is not None:
                idx = screen.nearest(bank, qb, ex, self.k, screened, buffer)
            if idx is None:
                if plain is None:
                    bank_t, bank_sq = self._plain_parts()
                    plain = (bank_t.to(q.device), bank_sq.to(q.device))
                bank_t, bank_sq = plain
                # ||b||^2 - 2 q.b in one fused product (||q||^2 is the same along a row)
                partial = torch.addmm(bank_sq, qb, bank_t, alpha=-2.0,
                                      out=buffer.view(-1)[: len(qb) * bank_t.shape[1]].view(len(qb), -1))
                if ex is not None:
                    hit = ex >= 0
                    if bool(hit.any()):
                        partial[hit.nonzero().squeeze(1), ex[hit]] = float("inf")
                _, idx = _select(partial, self.k)
            found.append(_measured(bank, qb, idx))
        return _joined(found, self.k, q.device)

    def _approximate(self, lists: _Lists, q: torch.Tensor,
                     exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `_nearest`, among the rows of each query's nearest cells (`_Lists.nearest`)."""
        bank = self.bank if self.bank.device == q.device else self.bank.to(q.device)
        lists = lists if lists.device == q.device else lists.to(q.device)
        step = max(1, _LIST_ELEMENTS // (lists.probes * lists.width))
        buffer = torch.empty((min(step, len(q)) * lists.probes, lists.width), device=q.device)
        found = []
        for start in range(0, len(q), step):
            qb = q[start : start + step]
            ex = exclude[start : start + step].to(q.device) if exclude is not None else None
            found.append(_measured(bank, qb, lists.nearest(qb, ex, self.k, buffer)))
        return _joined(found, self.k, q.device)

    def wide_distance(self, q: torch.Tensor, rows: int, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """[n]: each query row's mean distance to its `k` nearest among `rows` evenly spaced remembered rows
        (`wide_positions`), exactly; `exclude` [n] names a bank row to leave out per query (-1: none).

        The hybrid score's wide scale (ModelSettings.wide_share): k is a share of the rows, not a handful, so a
        group of incident records the memory holds does not vouch for its own members.
        """
        sample, lookup = self._wide_parts(rows)
        if not 1 <= k < len(sample):
            raise ValueError(f"wide k must be in [1, {len(sample) - 1}] for {len(sample)} rows, got {k}")
        sample = sample.to(q.device)
        # exclude -1 reads the lookup's last entry: -1
        slot = lookup[exclude.cpu().long()].to(q.device) if exclude is not None else None
        q = q.float()
        step = max(1, _CHUNK_ELEMENTS // len(sample))
        out = []
        for start in range(0, len(q), step):
            # one matrix product per chunk: a mean over k distances does not need the direct difference's
            # last digits (an exact twin's distance may come out as a few 1e-4 instead of 0)
            d = torch.cdist(q[start : start + step], sample, compute_mode="use_mm_for_euclid_dist")
            if slot is not None:
                s = slot[start : start + step]
                hit = (s >= 0).nonzero().squeeze(1)
                d[hit, s[hit]] = float("inf")
            out.append(d.topk(k, dim=1, largest=False).values.mean(dim=1))
        return torch.cat(out) if out else torch.empty(0, device=q.device)

    def _wide_parts(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """wide_distance's rows of the bank [r, d] and, per bank row (plus a last entry for -1), its place among
        them or -1. Made once per bank and row count, not for every batch scored."""
        if self._wide is None or self._wide[0] != rows:
            positions = torch.from_numpy(wide_positions(self.bank.shape[0], rows))
            lookup = torch.full((self.bank.shape[0] + 1,), -1, dtype=torch.int64)
            lookup[positions] = torch.arange(len(positions))
            self._wide = (rows, self.bank[positions.to(self.bank.device)], lookup)
        return self._wide[1], self._wide[2]

    def query(self, q: torch.Tensor, exclude: torch.Tensor | None = None) -> NeighborResult:
        """Distances, density ratios and neighbour means of query rows `q` [n, d] (found as `search` says);
        `exclude` [n] names a bank row to leave out per query (its own, for leave-one-out), -1 for none."""
        lists = self._lists_built()
        if lists is not None:
            dist, idx = self._approximate(lists, q.float(), exclude)
        else:
            dist, idx = self._nearest(q.float(), exclude)
        kdist = self.kdist.to(q.device)
        bank = self.bank if self.bank.device == q.device else self.bank.to(q.device)
        density = dist[:, -1] / kdist[idx].mean(dim=1).clamp_min(self._kdist_floor)
        return NeighborResult(dist.mean(dim=1), density, bank, idx)


def wide_positions(m: int, rows: int) -> npt.NDArray[np.int64]:
    """Positions of `rows` evenly spaced rows of a bank of `m` (all of them when rows >= m): the rows the wide
    scale is measured among, the same for the same bank whenever it is loaded."""
    if rows >= m:
        return np.arange(m, dtype=np.int64)
    return np.unique(np.linspace(0, m - 1, rows).round().astype(np.int64))


def _measured(bank: torch.Tensor, q: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances ||q - b|| [n, k] to the bank rows `idx` [n, k] found for each query, computed directly and
    ascending (ties in the order of `idx`), and those rows in the same order."""
    exact = (bank.index_select(0, idx.reshape(-1)).view(*idx.shape, -1) - q.unsqueeze(1)).square_().sum(dim=2)
    exact, order = torch.sort(exact, dim=1, stable=True)
    return exact.sqrt_(), idx.gather(1, order)


def _joined(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not parts:
        empty = torch.empty((0, k), device=device)
        return empty, empty.long()
    return torch.cat([dist for dist, _ in parts]), torch.cat([idx for _, idx in parts])


def nearest_distance(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Distance [n] from each row of `q` [n, d] to its nearest row of `bank` [m, d] (m >= 1)."""
    if bank.ndim != 2 or bank.shape[0] == 0 or q.shape[1] != bank.shape[1]:
        raise ValueError(f"bank must be [m >= 1, {q.shape[1]}], got {tuple(bank.shape)}")
    q = q.float()
    bank = bank.to(device=q.device, dtype=torch.float32)
    bank_t, bank_sq = bank.T.contiguous(), bank.square().sum(dim=1)
    step = max(1, min(512, _CHUNK_ELEMENTS // bank.shape[0]))
    out = []
    for start in range(0, len(q), step):
        qb = q[start : start + step]
        partial = torch.addmm(bank_sq, qb, bank_t, alpha=-2.0).amin(dim=1)
        out.append((partial + qb.square().sum(dim=1)).clamp_min(0.0).sqrt())
    return torch.cat(out) if out else torch.empty(0, device=q.device)


def _select(partial: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest values [n, k] of each row of `partial` [n, m], ascending, and their columns: exact.

    A full top-k over m columns costs a partial sort of every row. Instead the columns are cut into blocks
    of _BLOCK, each block's minimum is taken (one vectorised pass), and the top-k runs over the columns of
    the k blocks with the smallest minima only (plus the columns after the last whole block). That is
    exact: a value outside those k blocks lies in a block whose minimum is at least each of theirs, so
    k values at most as large are already among the candidates. About 7 times as fast as torch.topk over
    20,000 columns on one CPU core (104 rows: 0.43 against 2.95 ms); blocks of 128 columns beat blocks of
    64 (0.63 ms), whose minima take torch twice as long to reduce.
    """
    n, m = partial.shape
    blocks = m // _BLOCK
    if blocks <= 4 * k:
        return torch.topk(partial, k, dim=1, largest=False, sorted=True)
    whole = blocks * _BLOCK
    minima = partial[:, :whole].reshape(n, blocks, _BLOCK).amin(dim=2)
    _, best = torch.topk(minima, k, dim=1, largest=False, sorted=False)               # [n, k] block numbers
    offsets = torch.arange(_BLOCK, device=partial.device)
    columns = (best.unsqueeze(2) * _BLOCK + offsets).reshape(n, k * _BLOCK)
    if whole < m:
        tail = torch.arange(whole, m, device=partial.device).expand(n, m - whole)
        columns = torch.cat([columns, tail], dim=1)
    values, chosen = torch.topk(partial.gather(1, columns), k, dim=1, largest=False, sorted=True)
    return values, columns.gather(1, chosen)


class _Screen:
    """The bank in bfloat16, for a first pass that rules out most rows cheaply: the answers stay exact.

    On a CPU with bfloat16 hardware the product of a chunk of queries with the bank runs about five times
    as fast in bfloat16 as in float32 (the float32 product is most of an exact search). Its values
    a = ||b||^2 - 2 q.b are off the exact ones by at most e = c ||q|| ||b|| + c2 ||b||^2 (c from rounding q,
    b and the product to bfloat16 and from float32 sums; checked against float64 once per memory). So per
    query: k rows' a + e bound the k-th exact value from above (`upper`); only rows with a - e <= upper
    can be among the k nearest, and those few (tens of 20,000 on the benchmark's rows) are measured exactly.

    Rows are sorted by norm and laid out in groups of _GROUP: position t * G + j holds the (_GROUP j + t)-th
    smallest-norm row (G groups), so each group's minimum of a is one vectorised reduction over a [_GROUP, G]
    view, and the rows of a group have nearly the same norm, which keeps one bound per group tight.
    """

    def __init__(self, bank: torch.Tensor) -> None:
        m, d = bank.shape
        self.groups = -(-m // (_GROUP * _SUPER)) * _SUPER
        self.width = self.groups * _GROUP
        norms = bank.norm(dim=1)
        rank = torch.argsort(norms, stable=True)
        r = torch.arange(m)
        position = (r % _GROUP) * self.groups + r // _GROUP          # where the r-th smallest-norm row goes
        self.row = torch.zeros(self.width, dtype=torch.long)          # bank row at each position (padding: 0)
        self.row[position] = rank
        self.position = torch.empty(m, dtype=torch.long)
        self.position[rank] = position
        product = torch.zeros((d, self.width), dtype=torch.bfloat16)
        product[:, position] = (-2.0 * bank[rank]).T.to(torch.bfloat16)    # -2 b: exact in bfloat16 as b is
        self.product = product.contiguous()
        self.bank_sq = torch.full((self.width,), float("inf"))        # padding: never among the nearest
        self.bank_sq[position] = bank[rank].square().sum(dim=1)
        group_norm = torch.zeros(self.width)
        group_norm[position] = norms[rank]
        self.group_norm = group_norm.view(_GROUP, self.groups).amax(dim=0)     # [G]
        u, u32 = _BF16_UNIT, 2.0 ** -24
        # |bf16(q).bf16(b) rounded to bf16 - q.b| <= (3u + u^2 + d u32) ||q|| ||b||, twice for -2 q.b; the
        # float32 ||b||^2 and the sum a: (d + 3) u32 (||b||^2 + 2 ||q|| ||b||); a quarter more for safety
        self.c = 1.25 * (2.0 * (3.0 * u + u * u + d * u32) + 2.0 * (d + 3) * u32)
        self.sq_error = 1.25 * (d + 3) * u32 * self.group_norm.square()       # [G]
        self.offsets = torch.arange(_GROUP) * self.groups

    def _values(self, q: torch.Tensor, out_bf16: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """a = ||b||^2 - 2 q.b [len(q), width] from the bfloat16 product, in `out` (float32)."""
        n = len(q)
        product = torch.mm(q.to(torch.bfloat16), self.product, out=out_bf16[:n])
        a = out[:n]
        a.copy_(product)
        return a.add_(self.bank_sq)

    def _error(self, q: torch.Tensor) -> torch.Tensor:
        """Bound [len(q), G] of |a - (||b||^2 - 2 q.b)| per query and group."""
        return torch.addcmul(self.sq_error, q.norm(dim=1, keepdim=True), self.group_norm, value=self.c)

    def check(self, bank: torch.Tensor) -> bool:
        """Whether this torch's bfloat16 product keeps within the bound on some bank rows as queries (a
        backend that rounded differently would make the screen drop true neighbours)."""
        q = bank[:_SCREEN_CHECK_ROWS]
        a = self._values(q, torch.empty((len(q), self.width), dtype=torch.bfloat16), torch.empty((len(q), self.width)))
        b = bank.double()[self.row]
        exact = b.square().sum(dim=1) - 2.0 * (q.double() @ b.T)
        valid = torch.isfinite(self.bank_sq)
        error = self._error(q).repeat(1, _GROUP)           # position t * G + j is in group j
        ok = bool(((a.double() - exact).abs() <= error)[:, valid].all())
        if not ok:
            logger.warning("bfloat16 products exceed their error bound on this machine: neighbour search in float32")
        return ok

    def nearest(self, bank: torch.Tensor, q: torch.Tensor, exclude: torch.Tensor | None, k: int,
                out_bf16: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """Bank indices [n, k] of each query's k nearest rows (in no particular order); None when the screen
        would keep too many rows to gain anything (then search in float32)."""
        n, groups = len(q), self.groups
        a = self._values(q, out_bf16, out)
        if exclude is not None:
            hit = exclude >= 0
            if bool(hit.any()):
                a[hit.nonzero().squeeze(1), self.position[exclude[hit]]] = float("inf")
        minima = a.view(n, _GROUP, groups).amin(dim=1)                        # [n, G]
        error = self._error(q)
        # an upper bound of the exact k-th value: each group's minimum plus its bound is one row's, and the
        # smallest of those over _SUPER groups at a time gives k rows of k different sets of groups
        tops = (minima + error).view(n, groups // _SUPER, _SUPER).amin(dim=2)
        upper = torch.topk(tops, k, dim=1, largest=False, sorted=True).values[:, -1:]
        open_groups = (minima - error) <= upper                               # may hold one of the k nearest
        if int(open_groups.sum()) > n * groups // 4:
            return None
        r, g = open_groups.nonzero(as_tuple=True)
        columns = g.unsqueeze(1) + self.offsets                                # [pairs, _GROUP]
        lower = torch.take(a, (r * self.width).unsqueeze(1) + columns) - torch.take(error, r * groups + g).unsqueeze(1)
        p, t = (lower <= upper.squeeze(1).index_select(0, r).unsqueeze(1)).nonzero(as_tuple=True)
        query = r.index_select(0, p)
        rows = self.row.index_select(0, g.index_select(0, p) + t * groups)     # the candidates' bank rows
        exact = (bank.index_select(0, rows) - q.index_select(0, query)).square_().sum(dim=1)
        counts = torch.bincount(query, minlength=n)
        width = int(counts.max())
        flat = query * width + torch.arange(len(query)) - (counts.cumsum(0) - counts).index_select(0, query)
        padded = torch.full((n * width,), float("inf")).index_copy_(0, flat, exact).view(n, width)
        index = torch.zeros(n * width, dtype=torch.long).index_copy_(0, flat, rows).view(n, width)
        _, j = torch.topk(padded, k, dim=1, largest=False, sorted=False)
        return index.gather(1, j)


def _closest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index [n] of the nearest row of `centres` [c, d] to each row of `x` [n, d] (chunks of 16 Mi distances)."""
    centres_t, centres_sq = centres.T.contiguous(), centres.square().sum(dim=1)
    step = max(1, _CHUNK_ELEMENTS // len(centres))
    return torch.cat([torch.addmm(centres_sq, x[start : start + step], centres_t, alpha=-2.0).argmin(dim=1)
                      for start in range(0, len(x), step)])


def _kmeans(x: torch.Tensor, c: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices of `x` [n, d] by k-means cell (c seeded random rows to start, _KMEANS_ROUNDS Lloyd steps);
    empty cells left out."""
    centres = x[torch.randperm(len(x), generator=generator)[:c]].clone()
    for _ in range(_KMEANS_ROUNDS):
        assign = _closest(x, centres)
        counts = torch.bincount(assign, minlength=len(centres))
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1)
    assign = _closest(x, centres)
    order = torch.argsort(assign, stable=True)
    sizes = torch.bincount(assign, minlength=len(centres)).tolist()
    return [cell for cell in torch.split(order, sizes) if len(cell)]


def _cells(bank: torch.Tensor, rows: int, min_rows: int) -> list[torch.Tensor]:
    """Bank row indices in compact cells of about `rows` rows: k-means (seeded: the same bank gives the same
    cells), each cell above 1.5 times that split by k-means again (rows k-means cannot split are cut into
    equal pieces). Of more identical rows than a cell holds, one cell's worth is kept (the rest are never
    needed: a query's k nearest among them are as near as any). Cells below `min_rows` join the cell with
    the nearest centre."""
    generator = torch.Generator().manual_seed(0)
    cap = max(rows + rows // 2, 2 * min_rows)
    todo, cells = [torch.arange(len(bank))], []
    while todo:
        part = todo.pop()
        if len(part) <= cap:
            cells.append(part)
            continue
        block = bank[part]
        if bool((block == block[0]).all()):
            # identical rows (an idle host): any `cap` of them are as near to a query as all of them, so the
            # search keeps one cell of them (pieces with one same centre would only take each other's probes)
            cells.append(part[:cap])
            continue
        pieces = [part[cell] for cell in _kmeans(block, -(-len(part) // rows), generator)]
        if len(pieces) == 1:
            cells.extend(torch.tensor_split(part, -(-len(part) // rows)))
        else:
            todo.extend(pieces)
    small = [cell for cell in cells if len(cell) < min_rows]
    cells = [cell for cell in cells if len(cell) >= min_rows]
    if small and cells:
        centres = torch.stack([bank[cell].mean(dim=0) for cell in cells])
        target = _closest(torch.stack([bank[cell].mean(dim=0) for cell in small]), centres).tolist()
        for cell, j in zip(small, target, strict=True):
            cells[j] = torch.cat([cells[j], cell])
    return cells


def _products_by_cell(augmented: torch.Tensor, owner: torch.Tensor, counts: torch.Tensor,
                      products: list[torch.Tensor], widths: list[int], out: torch.Tensor) -> None:
    """out[the pairs of cell j, : widths[j]] = augmented[their queries] @ products[j], cell by cell (the
    (query, cell) pairs grouped by cell; `owner`: each pair's query; `counts`: pairs per cell)."""
    start = 0
    per_cell: list[int] = counts.tolist()
    for j in range(len(per_cell)):
        count = per_cell[j]
        if count > 0:
            torch.mm(augmented.index_select(0, owner[start : start + count]), products[j],
                     out=out[start : start + count, : widths[j]])
            start += count


_CellProducts = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[int], torch.Tensor], None]


@functools.cache
def _cell_products() -> _CellProducts:
    """`_products_by_cell` compiled by TorchScript, which runs its loop without the GIL: called from
    Python, each of its one or two hundred products would let go of the GIL and, while another thread
    runs Python (the daemon parses, validates and stores other requests meanwhile), wait up to the
    switch interval (5 ms) to win it back. The plain function where TorchScript is unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)      # torch.jit is deprecated, still supported
            scripted: Any = torch.jit.script(_products_by_cell)
        return cast(_CellProducts, scripted)
    except Exception as exc:      # any failure to compile: the same loop in Python
        logger.info("TorchScript unavailable; the approximate search's products run from Python",
                    extra={"error": str(exc)})
        return _products_by_cell


class _Lists:
    """The cells of the approximate search (`_cells`), each as one list of positions (its rows, padded to
    whole blocks of _LIST_BLOCK with rows that are never near: a squared norm of +inf).

    A query's candidates are the rows of the `probes` cells whose centres (the mean of their rows) lie
    nearest to it; among those the k nearest are found exactly, as `_select` does: block minima, then the k
    blocks with the smallest minima. Per cell, the queries that probe it are multiplied with it in one
    product, ||b||^2 - 2 q.b = [q, 1] . [-2 b, ||b||^2], so the sum costs no pass of its own; the products
    of a chunk of queries go to one buffer of `width` (the widest cell's) columns per (query, cell) pair.
    """

    def __init__(self, bank: torch.Tensor, cells: list[torch.Tensor]) -> None:
        m, d = bank.shape
        self.widths = [-(-len(cell) // _LIST_BLOCK) * _LIST_BLOCK for cell in cells]
        self.width = max(self.widths)
        self.probes = min(_LIST_PROBES, len(cells))
        self.rows = torch.full((len(cells), self.width), -1, dtype=torch.long)   # bank row per position
        self.cell = torch.full((m,), -1, dtype=torch.long)                        # cell of each bank row (-1: none)
        self.slot = torch.empty(m, dtype=torch.long)                              # its position there
        self.products: list[torch.Tensor] = []                                    # per cell [d + 1, its width]
        for j, cell in enumerate(cells):
            self.rows[j, : len(cell)] = cell
            self.cell[cell] = j
            self.slot[cell] = torch.arange(len(cell))
            product = torch.zeros((d + 1, self.widths[j]))
            product[:d, : len(cell)] = -2.0 * bank[cell].T
            product[d] = float("inf")
            product[d, : len(cell)] = bank[cell].square().sum(dim=1)
            self.products.append(product)
        self.blocks = torch.tensor(self.widths) // _LIST_BLOCK                    # whole blocks per cell
        centres = torch.stack([bank[cell].mean(dim=0) for cell in cells])
        self.centres_t, self.centres_sq = centres.T.contiguous(), centres.square().sum(dim=1)
        self.sizes = torch.tensor([len(cell) for cell in cells])
        self.offsets = torch.arange(_LIST_BLOCK)
        self.device = bank.device

    def to(self, device: torch.device) -> _Lists:
        moved = copy.copy(self)
        for name in ("rows", "cell", "slot", "blocks", "centres_t", "centres_sq", "sizes", "offsets"):
            setattr(moved, name, getattr(self, name).to(device))
        moved.products = [product.to(device) for product in self.products]
        moved.device = device
        return moved

    def usable(self, k: int) -> bool:
        """Whether every query finds k candidates (k + 1 with one row left out) among its cells' rows."""
        return self.probes * int(self.sizes.min()) > k

    def nearest(self, q: torch.Tensor, exclude: torch.Tensor | None, k: int, buffer: torch.Tensor) -> torch.Tensor:
        """Bank indices [n, k] of each query's k nearest rows among its cells' rows (in no particular order);
        `buffer` holds at least n * probes rows of `width` float32 values."""
        n, probes, width, block = len(q), self.probes, self.width, _LIST_BLOCK
        blocks = width // block
        near = torch.addmm(self.centres_sq, q, self.centres_t, alpha=-2.0)
        probe = torch.topk(near, probes, dim=1, largest=False, sorted=False).indices       # [n, probes] cells
        flat = probe.reshape(-1)
        order = torch.argsort(flat, stable=True)              # the (query, cell) pairs, grouped by cell
        owner = order.div(probes, rounding_mode="floor")      # the query of each grouped pair
        cell_of = flat.index_select(0, order)                 # the cell of each grouped pair
        augmented = torch.cat([q, torch.ones((n, 1), device=q.device)], dim=1)
        a = buffer[: n * probes]
        _cell_products()(augmented, owner, torch.bincount(flat, minlength=len(self.products)), self.products,
                         self.widths, a)
        if exclude is not None:
            left_out = exclude.index_select(0, owner)
            known = left_out.clamp_min(0)
            hit = (left_out >= 0) & (self.cell.index_select(0, known) == cell_of)
            if bool(hit.any()):
                pairs = hit.nonzero().squeeze(1)
                a[pairs, self.slot.index_select(0, known.index_select(0, pairs))] = float("inf")
        # block minima; the columns past a cell's width hold whatever was there before: its blocks count +inf
        minima = a.view(n * probes, blocks, block).amin(dim=2)
        past = torch.arange(blocks, device=q.device) >= self.blocks.index_select(0, cell_of).unsqueeze(1)
        minima.masked_fill_(past, float("inf"))
        grouped = torch.empty_like(order)
        grouped[order] = torch.arange(len(order), device=q.device)      # grouped row of pair (i, p): i * probes + p
        minima = minima.index_select(0, grouped).view(n, probes * blocks)
        best_minima, best = torch.topk(minima, k, dim=1, largest=False, sorted=False)   # [n, k] blocks
        pick, start_of = best.div(blocks, rounding_mode="floor"), best % blocks * block
        columns = ((grouped.view(n, probes).gather(1, pick) * width + start_of).unsqueeze(2) + self.offsets)
        values = torch.take(a, columns.view(n, k * block))
        # a block past its cell's width is picked only when the cells hold fewer than k blocks: never its values
        values.view(n, k, block).masked_fill_(torch.isinf(best_minima).unsqueeze(2), float("inf"))
        _, chosen = torch.topk(values, k, dim=1, largest=False, sorted=False)
        which = chosen.div(block, rounding_mode="floor")
        found = self.rows[probe.gather(1, pick.gather(1, which)), start_of.gather(1, which) + chosen % block]
        # -1 (padding) only for a query whose distances are NaN (inputs beyond float32): any row will do
        return found.clamp_min_(0)
