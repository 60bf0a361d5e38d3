"""A memory of training rows: distance to the nearest remembered normal rows, and local density.

The autoencoder's reconstruction error sees what the network failed to learn; distances to the
nearest remembered rows see how unusual a row is among the normal ones it was trained on. On the
20 ODDS core sets (bench/quality.py) the combination beats either alone.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["NeighborMemory", "NeighborResult", "nearest_distance"]

logger = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 1 << 24   # distances computed per chunk in nearest_distance (64 MiB of float32)
_QUERY_ELEMENTS = 1 << 21   # distances per chunk of queries in the memory's search (8 MiB: stays in cache)
_BLOCK = 128                # bank columns per block in the two-stage selection
_GROUP = 16                 # bank rows per group in the bfloat16 screen (see _Screen)
_SUPER = 8                  # groups per set in the screen's first upper bound
_SCREEN_MIN_DIM = 48        # narrower rows: the float32 product is cheap, the screen gains nothing (32: even)
_BF16_UNIT = 2.0 ** -8      # unit roundoff of bfloat16 (8 significant bits)
_SCREEN_CHECK_ROWS = 64     # bank rows whose screened products are checked against float64 once per memory


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
    k-th distance over the mean k-th distance of those neighbours, as in LOF), and the neighbours'
    mean row [n, d] (what the row "should" look like, for explanations)."""

    __slots__ = ("density", "distance", "neighbour_mean")

    def __init__(self, distance: torch.Tensor, density: torch.Tensor, neighbour_mean: torch.Tensor) -> None:
        self.distance = distance
        self.density = density
        self.neighbour_mean = neighbour_mean


class NeighborMemory:
    """Up to `size` encoded training rows `bank` [m, d] and each one's leave-one-out k-th distance."""

    def __init__(self, bank: torch.Tensor, kdist: torch.Tensor, k: int) -> None:
        if bank.ndim != 2 or kdist.shape != (bank.shape[0],):
            raise ValueError(f"bank must be [m, d] and kdist [m], got {tuple(bank.shape)} and {tuple(kdist.shape)}")
        if not 1 <= k < bank.shape[0]:
            raise ValueError(f"k must be in [1, {bank.shape[0] - 1}] for a bank of {bank.shape[0]} rows, got {k}")
        self.bank = bank.float().contiguous()
        self.kdist = kdist.float().contiguous()
        self.k = k
        self._bank_sq = self.bank.square().sum(dim=1)
        self._bank_t = self.bank.T.contiguous()
        self._screen: _Screen | bool | None = None        # built on the first CPU query; False: not usable
        # Rows with k or more exact twins have a k-th distance of 0 (an idle host reporting the same
        # values): the density ratio divides by at least a tenth of the typical k-th distance instead.
        positive = self.kdist[self.kdist > 0]
        self._kdist_floor = 0.1 * float(positive.median()) if positive.numel() else 1e-12

    @classmethod
    def build(
        cls, x: npt.NDArray[np.float32], k: int, size: int, seed: int
    ) -> tuple[NeighborMemory, npt.NDArray[np.intp]]:
        """Remember a seeded sample of at most `size` rows of `x`; returns the memory and their row indices."""
        n = len(x)
        k = max(1, min(k, n - 2))
        rows = np.arange(n) if n <= size else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        bank = torch.from_numpy(np.ascontiguousarray(x[rows], dtype=np.float32))
        memory = cls(bank, torch.zeros(len(rows)), k)
        with torch.inference_mode():
            dist, _ = memory._nearest(bank, torch.arange(len(rows)))
        return cls(bank, dist[:, -1].contiguous(), k), rows

    def to(self, device: torch.device) -> NeighborMemory:
        if self.bank.device == device:
            return self
        return NeighborMemory(self.bank.to(device), self.kdist.to(device), self.k)

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
        dists, index = [], []
        for start in range(0, len(q), step):
            qb = q[start : start + step]
            ex = exclude[start : start + step].to(q.device) if exclude is not None else None
            idx = None
            if screen is not None and screened is not None:
                idx = screen.nearest(bank, qb, ex, self.k, screened, buffer)
            if idx is None:
                if plain is None:
                    plain = (self._bank_t if self._bank_t.device == q.device else self._bank_t.to(q.device),
                             self._bank_sq.to(q.device))
                bank_t, bank_sq = plain
                # ||b||^2 - 2 q.b in one fused product (||q||^2 is the same along a row)
                partial = torch.addmm(bank_sq, qb, bank_t, alpha=-2.0,
                                      out=buffer.view(-1)[: len(qb) * bank_t.shape[1]].view(len(qb), -1))
                if ex is not None:
                    hit = ex >= 0
                    if bool(hit.any()):
                        partial[hit.nonzero().squeeze(1), ex[hit]] = float("inf")
                _, idx = _select(partial, self.k)
            exact = (bank.index_select(0, idx.reshape(-1)).view(*idx.shape, -1) - qb.unsqueeze(1)).square_().sum(dim=2)
            exact, order = torch.sort(exact, dim=1, stable=True)
            dists.append(exact.sqrt_())
            index.append(idx.gather(1, order))
        if not dists:
            empty = torch.empty((0, self.k), device=q.device)
            return empty, empty.long()
        return torch.cat(dists), torch.cat(index)

    def query(self, q: torch.Tensor, exclude: torch.Tensor | None = None) -> NeighborResult:
        """Distances, density ratios and neighbour means of query rows `q` [n, d]."""
        dist, idx = self._nearest(q.float(), exclude)
        kdist = self.kdist.to(q.device)
        bank = self.bank if self.bank.device == q.device else self.bank.to(q.device)
        density = dist[:, -1] / kdist[idx].mean(dim=1).clamp_min(self._kdist_floor)
        return NeighborResult(dist.mean(dim=1), density, bank[idx].mean(dim=1))


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
