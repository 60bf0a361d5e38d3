"""The arithmetic of scores and their explanations, shared by fitting and scoring.

Reconstruction errors per row (`mean_errors`); the hybrid score's parts, their normalisation on held-out
rows (`fit_normalizer`) and their combination into a score (`combine`, `review_affinity`); the rows as the
neighbour memory sees them (`memory_view`); and the per-feature contributions computed on demand for the
rows a caller asks for (`ErrorShares` for reconstruction-based scores, `HybridShares` for hybrid ones).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from training.preprocess import Preprocessor
from training.result import Rows
from training.schema import Schema
from training.settings import COMPONENTS, WIDE, Scoring

__all__ = [
    "SEQUENCE_CONTEXT_WEIGHT",
    "ErrorShares",
    "HybridShares",
    "combine",
    "feature_columns",
    "fit_normalizer",
    "joined",
    "mean_errors",
    "memory_view",
    "review_affinity",
]

logger = logging.getLogger(__name__)

SEQUENCE_CONTEXT_WEIGHT = 0.25   # neighbour distances: the records before a sequence record count this much


class ErrorShares:
    """Contributions of the reconstruction-based scores (ScoreResult.contributions on demand): each row's
    score split over the features in proportion to their reconstruction error (in float64: a row's
    contributions sum to its score).

    The error is computed for the rows asked for from their reconstruction and network inputs (the scored
    record's columns of each), the same float32 values as the score was summed from: a scorer asks for its
    few flagged rows, and the whole batch's error array is kept nowhere.
    """

    __slots__ = ("features", "l1", "recon", "scores", "x")

    def __init__(self, recon: npt.NDArray[np.float32], x: npt.NDArray[np.float32], l1: bool,
                 features: torch.Tensor | None, scores: npt.NDArray[np.float64]) -> None:
        self.recon = recon                    # [n, scored columns]
        self.x = x                            # [n, scored columns], may be a view of the network inputs
        self.l1 = l1
        self.features = features              # on the CPU
        self.scores = scores

    def __call__(self, rows: Rows) -> npt.NDArray[np.float64]:
        elem = _errors(torch.from_numpy(np.asarray(self.recon[rows])),
                       torch.from_numpy(np.ascontiguousarray(self.x[rows])), self.l1)
        per_feature = _per_feature(elem, self.features).double()
        shares = per_feature / per_feature.sum(dim=1, keepdim=True).clamp_min(1e-300)
        out: npt.NDArray[np.float64] = (shares * torch.from_numpy(np.asarray(self.scores[rows])).unsqueeze(-1)).numpy()
        return out


def _errors(recon: torch.Tensor, x: torch.Tensor, l1: bool) -> torch.Tensor:
    """(recon - x)^2, or |recon - x| with `l1`: the same values as the mse / l1 loss without reduction."""
    diff = recon - x
    return diff.abs_() if l1 else diff.square_()


def mean_errors(recon: torch.Tensor, x: torch.Tensor, l1: bool) -> torch.Tensor:
    """Per row of `recon` and `x` ([b, c] each), the mean over the c columns of `_errors`, as float64 [b].

    Summed in float32 (the errors' own precision; a float64 sum took 2.4 times as long at 256 columns): the
    contributions, float64 shares of each score, sum to it all the same.
    """
    return _errors(recon, x, l1).sum(dim=1).double().div_(recon.shape[1])


def feature_columns(preprocessor: Preprocessor, schema: Schema, device: torch.device) -> torch.Tensor | None:
    """[scored columns]: the feature (schema position) each encoded column of the scored record belongs
    to; None when that is the identity (one column per feature, in order)."""
    if preprocessor.n_columns == len(schema.features):
        return None
    return torch.from_numpy(preprocessor.column_owner.astype(np.int64)).to(device)


def _per_feature(values: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """Per row, the sum of `values` [n, scored columns] over each feature's columns [n, n_features] (column
    by column, in order: a row's sums do not depend on the other rows)."""
    if features is None:
        return values
    out = torch.zeros((len(values), int(features.max()) + 1), dtype=values.dtype, device=values.device)
    return out.index_add_(1, features, values)


def joined(pieces: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """The batches' arrays as one (the only one itself, without a copy)."""
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class HybridShares:
    """Contributions of hybrid scores (ScoreResult.contributions) on demand: per row, `_blend` of the
    reconstruction error per feature (from the row's reconstruction and network inputs, as `ErrorShares`)
    and the squared distance per feature to the mean of the row's neighbours in the memory, the same float64
    operations as when computed for all rows at once."""

    __slots__ = ("bank", "columns", "features", "l1", "neighbours", "recon", "score", "weights", "x", "z")

    def __init__(self, x: npt.NDArray[np.float32], columns: slice, bank: torch.Tensor,
                 neighbours: npt.NDArray[np.int64], recon: npt.NDArray[np.float32], l1: bool,
                 score: npt.NDArray[np.float64], z: dict[str, npt.NDArray[np.float64]],
                 weights: tuple[float, float, float], features: torch.Tensor | None) -> None:
        self.x = x                        # the network inputs; `columns`: the scored record's own
        self.columns = columns
        self.bank = bank                  # on the device the rows were scored on
        self.neighbours = neighbours
        self.recon = recon                # [n, scored columns]
        self.l1 = l1
        self.score = score
        self.z = z
        self.weights = weights
        self.features = features          # on the bank's device

    def __call__(self, rows: Rows) -> npt.NDArray[np.float64]:
        device = self.bank.device
        own = torch.from_numpy(np.ascontiguousarray(self.x[rows, self.columns])).to(device)
        near = self.bank[torch.from_numpy(np.asarray(self.neighbours[rows])).to(device)][:, :, self.columns].mean(dim=1)
        diff = _per_feature((own - near).square(), self.features).double().cpu()
        elem = _errors(torch.from_numpy(np.asarray(self.recon[rows])).to(device), own, self.l1)
        z = {name: torch.from_numpy(np.asarray(values[rows])) for name, values in self.z.items()}
        blended = _blend(torch.from_numpy(np.asarray(self.score[rows])), z, self.weights,
                         _per_feature(elem, self.features).double().cpu(), diff)
        out: npt.NDArray[np.float64] = blended.numpy()
        return out


def review_affinity(distance: torch.Tensor, to_incident: torch.Tensor, scoring: Scoring) -> torch.Tensor:
    """max(0, log(distance to the normal neighbours / distance to the nearest confirmed outlier))."""
    if scoring.normalizer is None:
        raise ValueError("hybrid scoring needs a normalizer")
    eps = scoring.normalizer["distance"][2]
    return torch.log((distance + eps) / (to_incident.double() + eps)).clamp_min(0.0)


def combine(
    values: Mapping[str, torch.Tensor], scoring: Scoring, affinity: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """softplus of the weighted mean of the log-standardised components, or of the log-standardised wide-scale
    distance where that is larger (when the model has one: `values` then holds WIDE), plus review_weight times
    the affinity to confirmed outliers, when given; and each component's z (and WIDE's)."""
    if scoring.normalizer is None:
        raise ValueError("hybrid scoring needs a normalizer")
    z = {name: _standardised(values[name], scoring.normalizer[name]) for name in COMPONENTS}
    mixed = _weighted(z, scoring.weights)
    if scoring.has_wide:
        z[WIDE] = _standardised(values[WIDE], scoring.normalizer[WIDE])
        mixed = torch.maximum(mixed, z[WIDE])
    if affinity is not None:
        mixed = mixed + scoring.review_weight * affinity
    return torch.nn.functional.softplus(mixed), z


def _weighted(z: Mapping[str, torch.Tensor], weights: tuple[float, float, float]) -> torch.Tensor:
    """The weighted mean of the components' z."""
    total = torch.zeros_like(z["reconstruction"])
    for name, weight in zip(COMPONENTS, weights, strict=True):
        total = total + weight * z[name]
    return total / sum(weights)


def _standardised(value: torch.Tensor, normal: tuple[float, float, float]) -> torch.Tensor:
    mean, std, eps = normal
    return (torch.log(value + eps) - mean) / std


def _blend(
    score: torch.Tensor, z: Mapping[str, torch.Tensor], weights: tuple[float, float, float],
    rec_features: torch.Tensor, near_features: torch.Tensor,
) -> torch.Tensor:
    """Split each score over features: the reconstruction error's per-feature shares and the per-feature
    distance to the neighbours' mean, mixed by how much each part pushed the score up."""
    push_rec = weights[0] * z["reconstruction"].clamp_min(0.0)
    push_near = weights[1] * z["distance"].clamp_min(0.0) + weights[2] * z["density"].clamp_min(0.0)
    total = push_rec + push_near
    share_rec = torch.where(total > 0, push_rec / total.clamp_min(1e-300), torch.ones_like(total))
    if WIDE in z:
        # a score the wide scale made: the distance to the neighbours' mean tells where the row lies apart
        share_rec = torch.where(z[WIDE] > _weighted(z, weights), torch.zeros_like(share_rec), share_rec)
    rec_share = rec_features / rec_features.sum(dim=1, keepdim=True).clamp_min(1e-300)
    near_share = near_features / near_features.sum(dim=1, keepdim=True).clamp_min(1e-300)
    shares = share_rec.unsqueeze(1) * rec_share + (1.0 - share_rec).unsqueeze(1) * near_share
    return shares * score.unsqueeze(1)


def fit_normalizer(values: Mapping[str, npt.NDArray[np.float64]]) -> dict[str, tuple[float, float, float]]:
    """Per component (and WIDE, when `values` holds it): (mean, std, eps) of log(value + eps) over held-out
    normal rows."""
    out = {}
    for name in (*COMPONENTS, WIDE):
        if name not in values:
            continue
        v = np.asarray(values[name], dtype=np.float64)
        scale = float(np.median(v)) or float(np.mean(v))
        eps = 1e-3 * scale + 1e-12
        logs = np.log(v + eps)
        std = float(np.std(logs))
        out[name] = (float(np.mean(logs)), std if std > 1e-9 else 1.0, eps)
    return out


def memory_view(x: torch.Tensor, window: int) -> torch.Tensor:
    """Rows as the neighbour memory sees them: in sequence mode the earlier records of each window are
    scaled by SEQUENCE_CONTEXT_WEIGHT, so one odd record raises its own distance most, not equally the
    distances of the window - 1 records after it. The record's own columns (the last block) are unchanged."""
    if window == 1:
        return x
    n, width = x.shape
    weights = torch.full((window, 1), SEQUENCE_CONTEXT_WEIGHT, dtype=x.dtype, device=x.device)
    weights[-1] = 1.0
    return (x.reshape(n, window, width // window) * weights).reshape(n, width)

