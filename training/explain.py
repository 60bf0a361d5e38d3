"""What normal would look like here: expected values and contributions of a record from normal records like it.

A reconstruction is a poor "expected value" for a flagged record: the autoencoder passes much of an unusual
value through (it reconstructs what it is given), so the expected value of a feature moved by 6 standard
deviations lay nearer the anomalous value than the normal one in most records, and a feature equal to its
"expected" value could still be named as a cause. `NormalExplainer` instead asks the neighbour memory, the
model's remembered normal training rows:

1. For each feature j, the `k` remembered rows nearest to the record on every *other* feature (and on the
   time features, when the model reads them) are the normal records like this one; their mean over j's
   encoded columns is j's expected encoding (a categorical feature's: the share of each level among them).
2. The feature deviating most from that expectation is the suspect. Step 1 is repeated with the suspect
   left out of every distance too, so that an anomalous feature does not pull the neighbours, and with
   them the expected values, of the features that are fine. Every other feature takes whichever of the two
   expectations its value agrees with better (a feature the suspect determines, a region by its latency,
   is left open without it).
3. A number deviates when it lies more than CONSISTENT_Z of the neighbours' standard deviations from their
   mean (by its squared z); a categorical or boolean value when fewer than MIN_SHARE of the neighbours have
   it, or half its share of the whole memory when that is smaller (`_rarity`). A feature that does not
   deviate is as expected: its expected value is its own value, and a feature that does gets the
   neighbours' mean (for a categorical feature, their most common level). Contributions split the record's
   score over the features in proportion to their deviations, so a feature whose value equals its expected
   value is never a cause; the expected record is the record with its deviating features repaired.

Only point-wise models with a neighbour memory are explained this way (the default hybrid score); others keep
the reconstruction. Computed for the rows asked for (a scorer asks for its few flagged rows), exactly, over
the memory (up to EXPLAIN_MEMORY rows of it), a chunk of rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from training.hybrid import feature_columns
from training.preprocess import Preprocessor
from training.result import Rows
from training.schema import Schema

__all__ = ["EXPLAIN_NEIGHBOURS", "NormalExplainer"]

EXPLAIN_NEIGHBOURS = 10       # normal records like this one, per feature
EXPLAIN_MEMORY = 8192         # remembered rows searched (an evenly spaced subset of a larger memory)
CONSISTENT_Z = 3.0            # a number within this many of its neighbours' standard deviations is as expected
SPREAD_FLOOR = 0.1            # ... their spread taken as at least this many of the window's standard deviations
MIN_SHARE = 0.2               # a level (or boolean side) this common among the neighbours is as expected (_rarity)
_CHUNK_ELEMENTS = 1 << 24     # rows x memory x columns held at once (64 MiB of float32)


class NormalExplainer:
    """Expected encodings and per-feature deviations of scored rows, from the model's neighbour memory.

    `x` [n, n_inputs]: the network inputs of the scored rows (the record's `n_columns` encoded columns first,
    then time features, if any). `bank` [m, n_inputs]: the memory. `scores` [n]: the rows' scores.
    `fallback` gives the contributions of rows whose every feature is as expected (their score comes from
    elsewhere, the density of their neighbourhood, say).
    """

    def __init__(self, x: npt.NDArray[np.float32], bank: torch.Tensor, preprocessor: Preprocessor, schema: Schema,
                 scores: npt.NDArray[np.float64], fallback: Callable[[Rows], npt.NDArray[np.float64]],
                 k: int = EXPLAIN_NEIGHBOURS) -> None:
        if bank.shape[0] > EXPLAIN_MEMORY:      # an evenly spaced subset: the memory is a sample of the window
            bank = bank[torch.linspace(0, bank.shape[0] - 1, EXPLAIN_MEMORY, device=bank.device).long()]
        self.x, self.bank, self.preprocessor, self.scores, self.fallback = x, bank, preprocessor, scores, fallback
        self.n_columns = preprocessor.n_columns
        self.k = max(1, min(k, int(bank.shape[0])))
        owner = feature_columns(preprocessor, schema, bank.device)       # each encoded column's feature
        self.owner = owner if owner is not None else torch.arange(self.n_columns, device=bank.device)
        self.n_features = len(schema.features)
        # a categorical block compares levels, a boolean its side of 0.5 (the missing columns of optional
        # numbers belong to the number's block and count as numbers)
        self.blocks: list[tuple[str, slice]] = [
            (f.kind, preprocessor.feature_slices[f.name]) for f in schema.features]
        # each encoded column's mean over the memory: a level's share among all remembered rows (0: never seen)
        self.overall = self.bank[:, : self.n_columns].mean(dim=0)
        self._cache: dict[bytes, tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]] = {}

    def _positions(self, rows: Rows) -> npt.NDArray[np.intp]:
        return np.arange(len(self.scores))[rows]

    def explain(self, rows: Rows) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        """The rows' expected encodings [p, n_columns] and per-feature deviations [p, n_features]."""
        positions = self._positions(rows)
        key = positions.tobytes()
        if key not in self._cache:
            parts = [self._chunk(positions[i: i + self._chunk_rows()])
                     for i in range(0, len(positions), self._chunk_rows())]
            expected = (np.concatenate([p[0] for p in parts]) if parts
                        else np.zeros((0, self.n_columns), dtype=np.float32))
            deviation = (np.concatenate([p[1] for p in parts]) if parts
                         else np.zeros((0, self.n_features), dtype=np.float64))
            self._cache = {key: (expected, deviation)}        # the last rows asked for: contributions, then expected
        return self._cache[key]

    def contributions(self, rows: Rows) -> npt.NDArray[np.float64]:
        """Each row's score split over the features in proportion to their deviations (rows [p, n_features])."""
        positions = self._positions(rows)
        _, deviation = self.explain(positions)
        total = deviation.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = deviation / total * self.scores[positions][:, np.newaxis]
        none = total[:, 0] <= 0
        if none.any():
            out[none] = self.fallback(positions[none])
        result: npt.NDArray[np.float64] = np.where(np.isfinite(out), out, 0.0)
        return result

    def expected(self, rows: Rows) -> pd.DataFrame:
        """The rows' expected values, decoded to features' units (index: the rows' positions)."""
        positions = self._positions(rows)
        encoded, _ = self.explain(positions)
        frame = self.preprocessor.decode(encoded)
        for name, (kind, block) in zip(frame.columns, self.blocks, strict=True):
            if kind == "numeric" and block.stop - block.start == 2:       # expected to be missing: missing
                frame[name] = frame[name].where(encoded[:, block.start + 1] < 0.5)
        frame.index = pd.Index(positions)
        return frame

    def _chunk_rows(self) -> int:
        return max(1, _CHUNK_ELEMENTS // max(1, int(self.bank.shape[0]) * int(self.bank.shape[1])))

    def _chunk(self, positions: npt.NDArray[np.intp]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        device = self.bank.device
        x = torch.from_numpy(np.ascontiguousarray(self.x[positions])).to(device).float()       # [p, n_inputs]
        c = self.n_columns
        with torch.inference_mode():
            diff = (x[:, None, :] - self.bank[None, :, :]).square_()                         # [p, m, n_inputs]
            per_feature = torch.zeros((len(x), diff.shape[1], self.n_features), dtype=diff.dtype, device=device)
            per_feature.index_add_(2, self.owner, diff[:, :, :c])                           # [p, m, d]
            total = diff.sum(dim=2)                                                          # [p, m]
            del diff
            none = torch.zeros((len(x), self.n_features), dtype=torch.bool, device=device)
            expected, deviation = self._pass(x, per_feature, total, none)
            # the suspect: the feature deviating most (one: two features whose relation broke, cpu pinned while
            # the load is low, would otherwise leave each other without the feature that judges them)
            suspects = torch.zeros_like(none)
            suspects[torch.arange(len(x), device=device), deviation.argmax(dim=1)] = True
            suspects &= deviation > 0
            if self.n_features > 1 and bool(suspects.any()):
                second, deviation2 = self._pass(x, per_feature, total, suspects)
                # the suspect's own second pass equals its first; another feature takes whichever pass it agrees
                # with better (with the suspect left out, a feature it determined, a region by its latency, is open)
                take = suspects | (deviation2 < deviation)                                  # [p, d]
                expected = torch.where(take[:, self.owner], second, expected)
                deviation = torch.where(take, deviation2, deviation)
        return expected.cpu().numpy().astype(np.float32), deviation.double().cpu().numpy()

    def _pass(self, x: torch.Tensor, per_feature: torch.Tensor, total: torch.Tensor,
              left_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expected encodings and deviations with each feature's neighbours found on the other features,
        the `left_out` [p, d] ones excluded too."""
        c = self.n_columns
        excluded = (per_feature * left_out[:, None, :]).sum(dim=2)                            # [p, m]
        # feature j: total minus j's own part minus the left-out features' parts (j's counted once)
        distance = total[:, :, None] - excluded[:, :, None] - per_feature * (~left_out)[:, None, :]  # [p, m, d]
        near = distance.topk(self.k, dim=1, largest=False).indices                          # [p, k, d]
        # the neighbours' values of each column's own feature: bank[near[:, :, owner[col]], col]
        rows = near[:, :, self.owner]                                                        # [p, k, c]
        cols = torch.arange(c, device=x.device).expand_as(rows)
        values = self.bank[rows, cols]                                                       # [p, k, c]
        mean, var = values.mean(dim=1), values.var(dim=1, unbiased=False)
        # a record whose every feature is left out has no "other features": the whole memory
        alone = left_out.all(dim=1)
        if x.shape[1] == c and bool(alone.any()):
            mean[alone] = self.bank[:, :c].mean(dim=0)
            var[alone] = self.bank[:, :c].var(dim=0, unbiased=False)
        return self._judge(x[:, :c], mean, var)

    def _rarity(self, share: torch.Tensor, overall: torch.Tensor) -> torch.Tensor:
        """The deviation of values held by a `share` of a row's neighbours and an `overall` share of the memory.

        A value is as expected (0) when some neighbours have it and at least MIN_SHARE of them, or half its
        overall share when that is smaller (a level of 20 % overall that the other features do not predict
        is often held by only 1 or 2 of 10 neighbours). Otherwise CONSISTENT_Z^2 * MIN_SHARE / share: rarer is
        further; a share of 0 counts as half a neighbour, or as the value's overall share plus one row when
        that is smaller, so a value never seen (or seen far more rarely) deviates most.
        """
        k_floor, m_floor = 1.0 / (2 * self.k), 1.0 / max(1, int(self.bank.shape[0]))
        enough = torch.minimum(torch.full_like(share, MIN_SHARE), 0.5 * overall)
        floor = torch.minimum(torch.full_like(share, k_floor), overall + m_floor)
        rare = CONSISTENT_Z ** 2 * MIN_SHARE / torch.maximum(share, floor)
        return torch.where((share > 0) & (share >= enough), torch.zeros_like(rare), rare)

    def _judge(self, own: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expected encodings and per-feature deviations from the neighbours' `mean` and `var` [p, c].

        A number deviates by its squared z against its neighbours (their spread, at least SPREAD_FLOOR
        standard deviations of the window), counted only beyond CONSISTENT_Z; a categorical or boolean
        value, and an optional number's being missing or present, by `_rarity` among them. A feature that does
        not deviate is as expected: its expected encoding is its own. Otherwise it is the neighbours' mean (for
        a categorical feature, each level's share).
        """
        z2 = (own - mean).square() / (var + SPREAD_FLOOR ** 2)
        deviation = torch.zeros((len(own), self.n_features), dtype=z2.dtype, device=own.device)
        deviation.index_add_(1, self.owner, z2)
        for j, (kind, block) in enumerate(self.blocks):
            if kind == "categorical":
                share = (own[:, block] * mean[:, block]).sum(dim=1)
                deviation[:, j] = self._rarity(share, (own[:, block] * self.overall[block]).sum(dim=1))
            elif kind == "boolean" or block.stop - block.start == 2:
                # a boolean's side of 0.5; an optional number's missing flag (its second column): a value that
                # is missing where normal records like this one have it, or present where they lack it
                flag = block.start if kind == "boolean" else block.start + 1
                on = own[:, flag] >= 0.5
                share = torch.where(on, mean[:, flag], 1.0 - mean[:, flag])
                rarity = self._rarity(share, torch.where(on, self.overall[flag], 1.0 - self.overall[flag]))
                if kind == "boolean":
                    deviation[:, j] = rarity
                else:           # a present number is judged by its value too; a missing one's fill is no value
                    deviation[:, j] = torch.where(on, rarity, torch.maximum(rarity, z2[:, block.start]))
        deviation = torch.where(deviation > CONSISTENT_Z ** 2, deviation, torch.zeros_like(deviation))
        usual = (deviation == 0)[:, self.owner]                                              # [p, c]
        return torch.where(usual, own, mean), deviation
