"""What scoring gives: `ScoreResult` (scores, outlier flags and their explanation), the `Rows` a caller may
select of it, and `Decoded`, the expected values decoded on demand."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from training._jsonable import to_jsonable
from training.preprocess import Preprocessor

__all__ = ["Decoded", "Rows", "ScoreResult"]

logger = logging.getLogger(__name__)

Rows = Sequence[int] | npt.NDArray[np.integer[Any]] | npt.NDArray[np.bool_] | slice
"""A 1-D selection of a result's rows: positions, a boolean mask or a slice (as numpy indexing takes them)."""


class ScoreResult:
    """Scores of n records and their explanation.

    scores [n] (higher = more anomalous), is_outlier [n] (scores > threshold), contributions
    [n, n_features] (each row sums to its score), expected (decoded reconstruction, one column per
    feature), unseen [n, n_features] (categorical value never seen in training), rare [n, n_features] (seen,
    but in fewer than `training.preprocess.RARE_SHARE` of the training rows; None: not known), new_key [n] (a
    per-key model that has not learned the record's key yet; None: not a per-key model).

    `contributions` and `expected` may be given as functions of the rows (a `Rows` selection, or
    `slice(None)` for all): they are then computed on first access and kept. `contributions_at(rows)` and
    `expected_at(rows)` give the same as `contributions[rows]` and `expected.iloc[rows]` without computing
    the other rows (a scorer needs them for its few flagged rows only).
    """

    __slots__ = ("_contributions", "_contributions_of", "_expected", "_expected_of", "components", "feature_names",
                 "is_outlier", "new_key", "out_of_range", "rare", "scores", "threshold", "unseen")

    def __init__(
        self,
        scores: npt.NDArray[np.float64],
        threshold: float,
        is_outlier: npt.NDArray[np.bool_],
        contributions: npt.NDArray[np.float64] | Callable[[Rows], npt.NDArray[np.float64]],
        expected: pd.DataFrame | Callable[[Rows], pd.DataFrame],
        unseen: npt.NDArray[np.bool_],
        feature_names: list[str],
        out_of_range: npt.NDArray[np.bool_] | None = None,
        components: dict[str, npt.NDArray[np.float64]] | None = None,
        rare: npt.NDArray[np.bool_] | None = None,
        new_key: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        self.scores = scores
        self.rare = rare
        self.new_key = new_key
        self.threshold = threshold
        self.is_outlier = is_outlier
        self.unseen = unseen
        self.feature_names = feature_names
        self.out_of_range = out_of_range
        self.components = components
        self._contributions: npt.NDArray[np.float64] | None = None
        self._contributions_of: Callable[[Rows], npt.NDArray[np.float64]] | None = None
        if callable(contributions):
            self._contributions_of = contributions
        else:
            self._contributions = contributions
        self._expected: pd.DataFrame | None = None
        self._expected_of: Callable[[Rows], pd.DataFrame] | None = None
        if callable(expected):
            self._expected_of = expected
        else:
            self._expected = expected

    @property
    def contributions(self) -> npt.NDArray[np.float64]:
        """[n, n_features] float64: each score split over the features."""
        if self._contributions is None:
            if self._contributions_of is None:
                raise RuntimeError("a ScoreResult without contributions")
            self._contributions = self._contributions_of(slice(None))
        return self._contributions

    @property
    def expected(self) -> pd.DataFrame:
        """The decoded reconstruction: one row per record, one column per feature."""
        if self._expected is None:
            if self._expected_of is None:
                raise RuntimeError("a ScoreResult without expected values")
            self._expected = self._expected_of(slice(None))
        return self._expected

    def _positions(self, rows: Rows) -> npt.NDArray[np.intp]:
        positions = np.arange(len(self.scores))[rows]
        if positions.ndim != 1:
            raise ValueError("rows must select a 1-D set of rows (positions, a boolean mask or a slice)")
        return positions

    def contributions_at(self, rows: Rows) -> npt.NDArray[np.float64]:
        """`contributions[rows]` ([len(rows), n_features]), computed for those rows only when not yet at hand."""
        positions = self._positions(rows)
        if self._contributions is not None or self._contributions_of is None:
            return self.contributions[positions]
        return self._contributions_of(positions)

    def expected_at(self, rows: Rows) -> pd.DataFrame:
        """`expected.iloc[rows]` (index: the rows' positions), decoded for those rows only when not yet at hand."""
        positions = self._positions(rows)
        if self._expected is not None or self._expected_of is None:
            return self.expected.iloc[positions]
        return self._expected_of(positions)

    def out_of_distribution(self, i: int) -> dict[str, list[str]] | None:
        """Row i's features the model never saw values like: unseen categories, categories it saw in fewer than
        RARE_SHARE of its training rows, numbers far out of range; and `new_key` for a record whose key a
        per-key model has not learned."""
        unseen = [self.feature_names[j] for j in np.flatnonzero(self.unseen[i])]
        rare = [] if self.rare is None else [self.feature_names[j] for j in np.flatnonzero(self.rare[i])]
        far = [] if self.out_of_range is None else [self.feature_names[j] for j in np.flatnonzero(self.out_of_range[i])]
        new = self.new_key is not None and bool(self.new_key[i])
        if not unseen and not rare and not far and not new:
            return None
        note = {"unseen_category": unseen, "rare_category": rare, "out_of_range": far}
        if new:       # judged against every record only: the model has no normal of its own for this key yet
            note["new_key"] = ["key"]
        return note

    def top_contributions(self, i: int, actual: Mapping[str, Any], k: int = 5) -> list[dict[str, Any]]:
        """Up to k features of row i with the largest contributions, largest first, JSON-able.

        `actual` maps feature names to the record's values (a missing name gives None).
        """
        row = self.contributions[i]          # all rows at once (kept): callers ask row after row
        score = float(self.scores[i])
        order = np.argsort(-row, kind="stable")[: max(k, 0)]
        expected = self.expected.iloc[i]
        return [
            {
                "feature": self.feature_names[j],
                "contribution": to_jsonable(row[j]),
                "share": to_jsonable(row[j] / score) if score > 0 else 0.0,
                "actual": to_jsonable(actual.get(self.feature_names[j])),
                "expected": to_jsonable(expected.iloc[j]),
            }
            for j in order
        ]


class Decoded:
    """`Preprocessor.decode` of the reconstructions of some rows (ScoreResult.expected on demand)."""

    __slots__ = ("preprocessor", "recon")

    def __init__(self, preprocessor: Preprocessor, recon: npt.NDArray[np.float32]) -> None:
        self.preprocessor = preprocessor
        self.recon = recon

    def __call__(self, rows: Rows) -> pd.DataFrame:
        if isinstance(rows, slice) and rows == slice(None):
            return self.preprocessor.decode(self.recon)
        positions = np.asarray(rows, dtype=np.intp)
        frame = self.preprocessor.decode(self.recon[positions])
        frame.index = pd.Index(positions, dtype=np.int64)
        return frame
