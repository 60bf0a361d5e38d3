"""A fitted model and what it does: `FittedModel` scores records and explains the scores, and saves itself
as an artifact (safetensors weights, JSON-able metadata) and loads from one. `network_inputs` makes the
network's input rows of a frame, for fitting and for scoring alike; `score_parts` scores network inputs
batch by batch."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from training._jsonable import to_jsonable
from training.artifact import (
    FORMAT,
    FORMAT_VERSION,
    check_envelope,
    network_from_bytes,
    network_to_bytes,
    read_part,
)
from training.choices import LossName
from training.errors import ArtifactError
from training.explain import NormalExplainer
from training.hybrid import (
    ErrorShares,
    HybridShares,
    combine,
    feature_columns,
    joined,
    mean_errors,
    memory_view,
    review_affinity,
)
from training.loop import resolve_device
from training.memory import NeighborMemory, nearest_distance
from training.model import AutoencoderSpec, DenseAutoencoder
from training.preprocess import Preprocessor, numeric_block
from training.result import Decoded, Rows, ScoreResult
from training.schema import Schema
from training.sequence import KEY_COLUMN, TIME_FEATURES, time_features, windows
from training.settings import COMPONENTS, WIDE, Scoring
from training.thresholds import Threshold

__all__ = ["OUT_OF_RANGE_SPANS", "FittedModel", "Parts", "network_inputs", "score_parts"]

logger = logging.getLogger(__name__)

OUT_OF_RANGE_SPANS = 0.5   # a value beyond the training range by more than half its width is out of range

# names of the extra tensors a hybrid model's artifact holds beside the network's weights
MEMORY_BANK = "__memory__.bank"
MEMORY_KDIST = "__memory__.kdist"
INCIDENTS = "__memory__.confirmed"


def network_inputs(
    frame: pd.DataFrame, preprocessor: Preprocessor, with_time: bool, window: int,
    history: pd.DataFrame | None = None,
) -> npt.NDArray[np.float32]:
    """The network's input rows for the rows of `frame` [n, n_inputs]: the encoded record, plus its time
    features when `with_time`, and in sequence mode (`window` > 1) the window of records up to it.

    In sequence mode `history` (earlier records of the same keys, not given rows) completes the windows.
    """
    full = frame if history is None or len(history) == 0 else pd.concat([history, frame], ignore_index=True)
    x = preprocessor.transform(full)
    if with_time:
        x = np.concatenate([x, time_features(full)], axis=1)
    if window > 1:
        x = windows(x, full, window)
    return np.ascontiguousarray(x[len(full) - len(frame):], dtype=np.float32)


class FittedModel:
    """A trained model: schema, preprocessor, network (on CPU, eval mode), neighbour memory (hybrid
    scoring), threshold and training report."""

    def __init__(
        self,
        schema: Schema,
        preprocessor: Preprocessor,
        spec: AutoencoderSpec,
        loss: LossName,
        threshold: Threshold,
        network: DenseAutoencoder,
        report: dict[str, Any],
        ranges: Mapping[str, tuple[float, float]] | None = None,
        scoring: Scoring | None = None,
        memory: NeighborMemory | None = None,
        incidents: torch.Tensor | None = None,
    ) -> None:
        self.schema = schema
        self.preprocessor = preprocessor
        self.spec = spec
        self.loss: LossName = loss
        self.threshold = threshold
        self.network = network.cpu().eval()
        self.report = report
        self.ranges: dict[str, tuple[float, float]] = dict(ranges or {})
        self._bounds: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None    # of `ranges`
        self.scoring = scoring or Scoring()
        if self.scoring.kind == "hybrid" and (memory is None or self.scoring.normalizer is None):
            raise ValueError("a hybrid model needs a neighbour memory and a normalizer")
        self.memory = memory
        # network inputs of outliers people confirmed [m, n_inputs] (hybrid scoring with review_weight > 0)
        self.incidents = incidents if incidents is not None and incidents.shape[0] > 0 else None
        # held-out normal scores of the run that fitted the threshold (kept in memory, not in the artifact)
        self.val_scores: npt.NDArray[np.float64] | None = None

    @property
    def needs_context(self) -> bool:
        """Whether scoring reads each record's timestamp and key (the frame's TS_COLUMN and KEY_COLUMN):
        time features, sequence mode, per-key normal."""
        return self.scoring.time_features or self.scoring.window > 1 or self.preprocessor.keys is not None

    @property
    def needs_history(self) -> bool:
        """Whether scoring a record needs the records of its key before it (sequence mode)."""
        return self.scoring.window > 1

    def inputs(self, frame: pd.DataFrame, history: pd.DataFrame | None = None) -> npt.NDArray[np.float32]:
        """The network's input rows for the rows of `frame` [n, spec.n_inputs].

        In sequence mode `history` (earlier records of the same keys, not scored) completes the windows.
        """
        return network_inputs(frame, self.preprocessor, self.scoring.time_features, self.scoring.window, history)

    def encode(self, frame: pd.DataFrame, batch_size: int = 8192) -> npt.NDArray[np.float32]:
        """Latent codes [n, latent] of the rows of `frame` (the code's mean for a variational model)."""
        x = self.inputs(frame)
        codes = np.empty((len(x), self.spec.latent), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch = torch.from_numpy(x[start : start + batch_size])
                codes[start : start + batch_size] = self.network.encode(batch).numpy()
        return codes

    def score(
        self, frame: pd.DataFrame, batch_size: int = 8192, device: str | torch.device = "cpu",
        history: pd.DataFrame | None = None, reviews: bool = True,
    ) -> ScoreResult:
        """Score every row of `frame` (columns must include the schema's features; KeyError otherwise).

        A score that is NaN (only possible for inputs beyond float32 range) is reported as +inf, so the
        record counts as an outlier instead of silently passing. Contributions split each score over
        the features; `expected` is what normal records like each one hold (`training.explain`) for a point-wise
        hybrid model, the autoencoder's reconstruction otherwise. `reviews=False` leaves the
        confirmed outliers out of the score (to score those same outliers without their own echo).
        """
        fast = None
        if (history is None or len(history) == 0) and not self.scoring.time_features and self.scoring.window == 1:
            fast = self.preprocessor.transform_flagged(frame, *self._range_bounds())
        if fast is not None:           # all required numeric features: one pass for the inputs and the ranges
            x, far = fast
        else:
            x, far = self.inputs(frame, history), self.out_of_range(frame)
        unseen, rare = self.preprocessor.category_masks(frame)
        target = device if isinstance(device, torch.device) else resolve_device(device)
        parts = score_parts(self, x, batch_size, target, reviews)
        scores = np.where(np.isnan(parts.scores), np.inf, parts.scores)
        return ScoreResult(
            out_of_range=far,
            scores=scores,
            threshold=self.threshold.value,
            is_outlier=scores > self.threshold.value,
            contributions=parts.contributions,
            expected=parts.expected if parts.expected is not None else Decoded(self.preprocessor, parts.recon),
            unseen=unseen,
            feature_names=self.schema.names,
            components=parts.components,
            rare=rare,
            new_key=self._new_keys(frame),
        )

    def _new_keys(self, frame: pd.DataFrame) -> npt.NDArray[np.bool_] | None:
        """[n]: rows whose key a per-key model did not learn; None for another model or a frame without keys."""
        keys = self.preprocessor.keys
        if keys is None or KEY_COLUMN not in frame.columns:
            return None
        return ~keys.known(frame)

    def _range_bounds(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Per feature (schema order): the values below / above which `out_of_range` flags a value
        (-inf / inf for a feature it does not check). Computed once: the ranges do not change."""
        if self._bounds is not None:
            return self._bounds
        below = np.full(len(self.schema.features), -np.inf)
        above = np.full(len(self.schema.features), np.inf)
        checked = [(j, name) for j, name in enumerate(self.schema.names) if name in self.ranges]
        if checked:
            lows = np.array([self.ranges[name][0] for _, name in checked])
            highs = np.array([self.ranges[name][1] for _, name in checked])
            margins = OUT_OF_RANGE_SPANS * np.maximum(np.maximum(highs - lows, np.abs(highs) * 1e-6), 1e-12)
            columns = [j for j, _ in checked]
            below[columns] = lows - margins
            above[columns] = highs + margins
        below.flags.writeable = above.flags.writeable = False
        self._bounds = (below, above)
        return self._bounds

    def out_of_range(self, frame: pd.DataFrame) -> npt.NDArray[np.bool_]:
        """[n, n_features]: numeric values more than OUT_OF_RANGE_SPANS training ranges beyond its edges."""
        mask = np.zeros((len(frame), len(self.schema.features)), dtype=bool)
        checked = [(j, name) for j, name in enumerate(self.schema.names) if name in self.ranges]
        block = numeric_block(frame, [name for _, name in checked], copy=False)
        if block is not None:               # plain numeric columns: one comparison for the whole block
            below, above = self._range_bounds()
            columns = [j for j, _ in checked]
            with np.errstate(invalid="ignore"):
                if len(columns) == mask.shape[1]:       # every feature is checked: the mask is the comparison
                    return np.asarray((block < below) | (block > above))
                mask[:, columns] = (block < below[columns]) | (block > above[columns])
            return mask
        for j, name in enumerate(self.schema.names):
            if name not in self.ranges:
                continue
            low, high = self.ranges[name]
            margin = OUT_OF_RANGE_SPANS * max(high - low, abs(high) * 1e-6, 1e-12)
            values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                mask[:, j] = (values < low - margin) | (values > high + margin)
        return mask

    def to_artifact(self) -> tuple[bytes, dict[str, Any]]:
        """Safetensors bytes of the network weights (and the neighbour memory), JSON-able metadata for the rest."""
        extra = None
        if self.memory is not None:
            extra = {MEMORY_BANK: self.memory.bank, MEMORY_KDIST: self.memory.kdist}
            if self.incidents is not None:
                extra[INCIDENTS] = self.incidents
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "schema": self.schema.to_dict(),
            "preprocessor": self.preprocessor.to_dict(),
            "spec": self.spec.to_dict(),
            "loss": self.loss,
            "threshold": self.threshold.to_dict(),
            "report": to_jsonable(self.report),
            "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in self.ranges.items()},
            "scoring": self.scoring.to_dict(),
        }
        return network_to_bytes(self.network, extra), meta

    @classmethod
    def from_artifact(cls, weights: bytes, meta: Mapping[str, Any]) -> FittedModel:
        """Rebuild a model from `to_artifact` output; ArtifactError if it cannot be interpreted.

        Weights are read with safetensors only: loading an artifact cannot execute code.
        """
        check_envelope(meta)
        schema = read_part(meta, "schema", Schema.from_dict)
        preprocessor = read_part(meta, "preprocessor", Preprocessor.from_dict)
        spec = read_part(meta, "spec", AutoencoderSpec.from_dict)
        threshold = read_part(meta, "threshold", Threshold.from_dict)
        scoring = read_part(meta, "scoring", Scoring.from_dict) if "scoring" in meta else Scoring()
        loss = meta["loss"]
        if loss not in get_args(LossName):
            raise ArtifactError(f"unknown loss {loss!r}")
        if not isinstance(meta["report"], Mapping):
            raise ArtifactError("'report' must be a mapping")
        if preprocessor.schema != schema:
            raise ArtifactError("the preprocessor was fitted for a different schema than 'schema'")
        per_record = preprocessor.n_columns + (len(TIME_FEATURES) if scoring.time_features else 0)
        if spec.n_inputs != per_record * scoring.window:
            raise ArtifactError(
                f"spec.n_inputs is {spec.n_inputs} but the preprocessor makes {preprocessor.n_columns} "
                f"columns per record (window {scoring.window})"
            )
        if (loss == "bce") != (spec.output == "sigmoid"):
            raise ArtifactError(f"loss {loss!r} does not fit a spec with output {spec.output!r}")
        network, extra = network_from_bytes(weights, spec, optional=(MEMORY_BANK, MEMORY_KDIST, INCIDENTS))
        memory = None
        if scoring.kind == "hybrid":
            if MEMORY_BANK not in extra or MEMORY_KDIST not in extra or scoring.normalizer is None:
                raise ArtifactError("a hybrid model's artifact lacks its neighbour memory or normalizer")
            bank, kdist = extra[MEMORY_BANK], extra[MEMORY_KDIST]
            if bank.ndim != 2 or bank.shape[1] != spec.n_inputs or kdist.shape != (bank.shape[0],):
                raise ArtifactError(f"neighbour memory has shape {tuple(bank.shape)}, expected [m, {spec.n_inputs}]")
            try:
                memory = NeighborMemory(bank, kdist, scoring.neighbors, scoring.search)
            except ValueError as exc:
                raise ArtifactError(f"bad neighbour memory: {exc}") from exc
            memory.prepare()          # the approximate search's cells: made now, not by the first batch
        incidents = extra.get(INCIDENTS)
        if incidents is not None and (incidents.ndim != 2 or incidents.shape[1] != spec.n_inputs):
            raise ArtifactError(
                f"confirmed outliers have shape {tuple(incidents.shape)}, expected [m, {spec.n_inputs}]")
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in dict(meta.get("ranges") or {}).items()}
        return cls(schema, preprocessor, spec, loss, threshold, network, dict(meta["report"]), ranges,
                   scoring, memory, incidents)


@dataclass(frozen=True)
class Parts:
    """What `score_parts` gives: scores, contributions (or a function of the rows giving them),
    reconstructions of the scored records' columns, and the hybrid score's components."""

    scores: npt.NDArray[np.float64]
    contributions: npt.NDArray[np.float64] | Callable[[Rows], npt.NDArray[np.float64]]
    recon: npt.NDArray[np.float32]
    components: dict[str, npt.NDArray[np.float64]] | None
    expected: Callable[[Rows], pd.DataFrame] | None = None     # None: the decoded reconstruction


def score_parts(
    model: FittedModel, x: npt.NDArray[np.float32], batch_size: int, device: torch.device, reviews: bool = True,
) -> Parts:
    """Scores, per-feature contributions and reconstructions of network inputs `x`, batch by batch.

    Contributions are left to compute on demand, from the reconstructions and the inputs (`ErrorShares`), and
    for hybrid scores also from the neighbours found (`HybridShares`).
    """
    net = model.network if device.type == "cpu" else copy.deepcopy(model.network).to(device)
    memory = model.memory.to(device) if model.memory is not None else None
    scoring, spec, pre = model.scoring, model.spec, model.preprocessor
    n, n_cols = len(x), pre.n_columns
    last = spec.n_inputs - spec.columns          # the scored record's columns start here
    hybrid = scoring.kind == "hybrid"
    l1 = model.loss == "l1"
    scores: list[npt.NDArray[np.float64]] = []
    recons: list[npt.NDArray[np.float32]] = []
    neighbours: list[npt.NDArray[np.int64]] = []        # hybrid: the memory rows nearest to each row
    zs: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in COMPONENTS}     # hybrid
    comps: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in COMPONENTS}
    with torch.inference_mode():
        for start in range(0, max(n, 1), batch_size):
            xb = torch.from_numpy(x[start : start + batch_size]).to(device)
            rb = net(xb)
            own_r = rb[:, last : last + n_cols]
            rec = mean_errors(own_r, xb[:, last : last + n_cols], l1)
            recons.append(own_r.float().cpu().numpy())
            if scoring.kind == "reconstruction":
                score = rec
            elif scoring.kind == "elbo":
                score = rec + spec.beta * net.kl_per_row(xb).double() / spec.n_inputs
            else:
                if memory is None or scoring.normalizer is None:
                    raise ArtifactError("a hybrid model needs a neighbour memory and a normalizer")
                view = memory_view(xb, spec.window)
                own = memory.own_rows(view)
                near = memory.query(view, own)
                values = {"reconstruction": rec, "distance": near.distance.double(), "density": near.density.double()}
                if scoring.has_wide:
                    values[WIDE] = memory.wide_distance(view, scoring.wide_rows, scoring.wide_k, own).double()
                affinity = None
                if reviews and model.incidents is not None and scoring.review_weight > 0:
                    affinity = review_affinity(values["distance"], nearest_distance(xb, model.incidents), scoring)
                score, z = combine(values, scoring, affinity)
                neighbours.append(near.rows.cpu().numpy())
                for name in z:
                    comps.setdefault(name, []).append(values[name].cpu().numpy())
                    zs.setdefault(name, []).append(z[name].cpu().numpy())
            scores.append(score.cpu().numpy())
    recon, all_scores = joined(recons), joined(scores)
    contrib: Callable[[Rows], npt.NDArray[np.float64]]
    expected: Callable[[Rows], pd.DataFrame] | None = None
    if hybrid and memory is not None:
        contrib = HybridShares(x, slice(last, last + n_cols), memory.bank, joined(neighbours), recon, l1,
                               all_scores, {name: joined(v) for name, v in zs.items()}, scoring.weights,
                               feature_columns(model.preprocessor, model.schema, device))
        if spec.window == 1:       # point-wise: explained by the normal records like each one (training.explain)
            explainer = NormalExplainer(x, memory.bank, model.preprocessor, model.schema, all_scores, contrib)
            contrib, expected = explainer.contributions, explainer.expected
    else:
        # the scored record's inputs: a view of x for a point-wise model; a copy for windows (whose inputs
        # hold the window's earlier records too)
        own_x = x[:, last : last + n_cols] if last == 0 else np.ascontiguousarray(x[:, last : last + n_cols])
        contrib = ErrorShares(recon, own_x, l1, feature_columns(model.preprocessor, model.schema, torch.device("cpu")),
                              all_scores)
    return Parts(all_scores, contrib, recon,
                 {name: joined(v) for name, v in comps.items()} if hybrid else None, expected)

