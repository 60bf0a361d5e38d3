"""A memory of training rows: distance to the nearest remembered normal rows, and local density.

The autoencoder's reconstruction error sees what the network failed to learn; distances to the
nearest remembered rows see how unusual a row is among the normal ones it was trained on. On the
20 ODDS core sets (bench/quality.py) the combination beats either alone.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["NeighborMemory", "NeighborResult", "nearest_distance"]

logger = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 1 << 24   # distances computed per chunk in nearest_distance (64 MiB of float32)
_QUERY_ELEMENTS = 1 << 21   # distances per chunk of queries in the memory's search (8 MiB: stays in cache)
_BLOCK = 128                # bank columns per block in the two-stage selection


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

    def _nearest(self, q: torch.Tensor, exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted distances [n, k] and bank indices [n, k] of each query row's k nearest rows (exact).

        `exclude` [n] names a bank row to skip per query (its own, for leave-one-out), -1 for none.
        Distances come from ||q||^2 + ||b||^2 - 2 q.b (one matrix product per chunk of queries, small
        enough to stay in the CPU's cache), then a two-stage selection (`_select`).
        """
        bank_t = self._bank_t if self._bank_t.device == q.device else self._bank_t.to(q.device)
        bank_sq = self._bank_sq.to(q.device)
        step = max(1, min(512, _QUERY_ELEMENTS // max(1, bank_t.shape[1])))
        dists, index = [], []
        # one distance buffer for every chunk: a fresh 8 MiB block per chunk costs page faults (about a
        # third more time on one core than the product itself needs)
        buffer = torch.empty((min(step, len(q)), bank_t.shape[1]), device=q.device)
        for start in range(0, len(q), step):
            qb = q[start : start + step]
            # ||b||^2 - 2 q.b in one fused product; ||q||^2 is the same along a row, so it is added to the
            # k selected values only
            partial = torch.addmm(bank_sq, qb, bank_t, alpha=-2.0, out=buffer[: len(qb)])
            if exclude is not None:
                ex = exclude[start : start + step].to(q.device)
                hit = ex >= 0
                if bool(hit.any()):
                    partial[hit.nonzero().squeeze(1), ex[hit]] = float("inf")
            values, idx = _select(partial, self.k)
            dists.append((values + qb.square().sum(dim=1, keepdim=True)).clamp_min(0.0).sqrt())
            index.append(idx)
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
