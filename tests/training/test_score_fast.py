"""FittedModel.score's lazy and one-pass parts against a straightforward computation of the same things.

The scoring path computes the contributions and expected values on demand (and for some rows only), and
encodes an all-numeric frame and flags its out-of-range values in one pass; none of that may change a
number. The references here are computed directly: a forward pass of the whole frame, the per-element
error, its row sums (float32, as float64 over the columns), the one-hot feature sums and each score split in
proportion to them, `Preprocessor.decode`, and per-feature comparisons.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import torch

from tests.training._data import correlated_frame, mixed_frame
from training import preprocess
from training.choices import LossName
from training.explain import NormalExplainer
from training.fit import fit_model
from training.fitted import OUT_OF_RANGE_SPANS, FittedModel
from training.loop import TrainSettings
from training.result import ScoreResult
from training.schema import Feature, Schema
from training.settings import ModelSettings

MIXED = Schema((
    Feature("load", "numeric"),
    Feature("latency", "numeric"),
    Feature("errors", "numeric", optional=True),
    Feature("region", "categorical"),
    Feature("busy", "boolean", optional=True),
))


def _train(loss: LossName) -> TrainSettings:
    return TrainSettings(epochs=3, batch_size=128, device="cpu", seed=0, loss=loss)


def _scoring_frame() -> pd.DataFrame:
    """Mixed records with missing values, unseen categories and far out-of-range numbers."""
    frame = mixed_frame(400, seed=7).drop(columns=["note"]).astype({"busy": object})
    frame.loc[3, "region"] = "mars"
    frame.loc[5, "region"] = "moon"
    frame.loc[7, "load"] = 1e6
    frame.loc[9, "latency"] = -1e5
    frame.loc[[11, 12, 13], "errors"] = np.nan
    frame.loc[[2, 14], "busy"] = None
    return frame


@pytest.fixture(scope="module", params=[("reconstruction", "mse"), ("reconstruction", "l1"), ("hybrid", "mse"),
                                        ("hybrid", "l1"), ("reconstruction", "bce")])
def mixed(request: pytest.FixtureRequest) -> FittedModel:
    score, loss = request.param
    return fit_model(mixed_frame(500, seed=0), MIXED, ModelSettings(hidden=(16,), latent=3, score=score),
                     _train(loss))


def _bits(a: npt.NDArray[Any]) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _direct(model: FittedModel, frame: pd.DataFrame) -> dict[str, Any]:
    """Reconstruction, per-element error, score of a reconstruction model, contributions and expected values,
    computed in one forward pass of the whole frame, the way the scoring path is defined."""
    pre = model.preprocessor
    x = torch.from_numpy(model.inputs(frame))
    with torch.inference_mode():
        recon = model.network(x)
        elem = (recon - x).abs() if model.loss == "l1" else (recon - x).square()
        rec = elem.sum(dim=1).double() / pre.n_columns
        one_hot = torch.zeros((pre.n_columns, len(model.schema.features)))
        for j, name in enumerate(model.schema.names):
            one_hot[pre.feature_slices[name], j] = 1.0
        per_feature = (elem @ one_hot if pre.n_columns != len(model.schema.features) else elem).double()
        shares = per_feature / per_feature.sum(dim=1, keepdim=True).clamp_min(1e-300)
    return {"recon": recon.numpy(), "rec": rec.numpy(), "shares": shares.numpy(),
            "contributions": (shares * rec.unsqueeze(1)).numpy(),
            "expected": pre.decode(recon.numpy())}


def _direct_masks(model: FittedModel, frame: pd.DataFrame) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """unseen and out-of-range masks feature by feature, from the frame's values."""
    n, names = len(frame), model.schema.names
    unseen = np.zeros((n, len(names)), dtype=bool)
    far = np.zeros((n, len(names)), dtype=bool)
    state = model.preprocessor.to_dict()["states"]
    for j, feature in enumerate(model.schema.features):
        column = frame[feature.name]
        if feature.kind == "categorical":
            known = {*state[feature.name]["categories"], *state[feature.name]["other"]}
            unseen[:, j] = [v is not None and not (isinstance(v, float) and np.isnan(v)) and str(v) not in known
                            for v in column]
        elif feature.name in model.ranges:
            low, high = model.ranges[feature.name]
            margin = OUT_OF_RANGE_SPANS * max(high - low, abs(high) * 1e-6, 1e-12)
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                far[:, j] = (values < low - margin) | (values > high + margin)
    return unseen, far


def test_mixed_schema_results_match_a_direct_computation(mixed: FittedModel) -> None:
    frame = _scoring_frame()
    result = mixed.score(frame)
    direct = _direct(mixed, frame)
    unseen, far = _direct_masks(mixed, frame)
    np.testing.assert_array_equal(result.unseen, unseen)
    assert result.out_of_range is not None
    np.testing.assert_array_equal(result.out_of_range, far)
    assert result.unseen[[3, 5]].any(axis=1).all() and result.out_of_range[[7, 9]].any(axis=1).all()
    if mixed.scoring.kind == "hybrid":
        # point-wise hybrid: expected values from the normal records like each row (training.explain), found
        # from the inputs of the direct path
        assert mixed.memory is not None
        explainer = NormalExplainer(mixed.inputs(frame), mixed.memory.bank, mixed.preprocessor, mixed.schema,
                                    result.scores, lambda rows: np.zeros((0, len(mixed.schema.features))))
        pd.testing.assert_frame_equal(result.expected, explainer.expected(slice(None)), check_exact=True)
    else:
        pd.testing.assert_frame_equal(result.expected, direct["expected"], check_exact=True)
    np.testing.assert_array_equal(result.is_outlier, result.scores > result.threshold)
    if mixed.scoring.kind == "reconstruction":
        assert _bits(result.scores) == _bits(direct["rec"])
        assert _bits(result.contributions) == _bits(direct["contributions"])
    else:
        assert result.components is not None
        assert _bits(result.components["reconstruction"]) == _bits(direct["rec"])
        np.testing.assert_allclose(result.contributions.sum(axis=1), result.scores, rtol=1e-9)


def test_row_accessors_equal_indexing_the_full_results(mixed: FittedModel) -> None:
    frame = _scoring_frame()
    full = mixed.score(frame)
    contributions, expected = full.contributions, full.expected
    mask = np.zeros(len(frame), dtype=bool)
    mask[[1, 7, 350]] = True
    selections: list[Any] = [np.array([7, 0, 399, 7]), [3, 5], mask, slice(10, 20), np.array([], dtype=np.intp),
                             [-1]]
    for rows in selections:
        lazy = mixed.score(frame)                       # nothing computed for all rows yet
        assert _bits(lazy.contributions_at(rows)) == _bits(contributions[rows])
        pd.testing.assert_frame_equal(lazy.expected_at(rows), expected.iloc[rows], check_exact=True)
        assert _bits(full.contributions_at(rows)) == _bits(contributions[rows])     # from the computed ones
        pd.testing.assert_frame_equal(full.expected_at(rows), expected.iloc[rows], check_exact=True)
        # and the full results computed after the rows: the same as before
        assert _bits(lazy.contributions) == _bits(contributions)
        pd.testing.assert_frame_equal(lazy.expected, expected, check_exact=True)
    for i in (0, 7, 3):
        assert mixed.score(frame).top_contributions(i, frame.iloc[i].to_dict()) == \
            full.top_contributions(i, frame.iloc[i].to_dict())


def test_batches_are_joined_as_computed(mixed: FittedModel) -> None:
    """Scored in batches of 37 rows: each batch's results as a direct computation of that batch gives them."""
    frame = _scoring_frame()
    pieces = mixed.score(frame, batch_size=37)
    parts = [mixed.score(frame.iloc[start : start + 37].reset_index(drop=True)) for start in range(0, len(frame), 37)]
    for name in ("scores", "is_outlier", "contributions", "unseen", "out_of_range"):
        assert _bits(getattr(pieces, name)) == _bits(np.concatenate([getattr(p, name) for p in parts])), name
    pd.testing.assert_frame_equal(pieces.expected, pd.concat([p.expected for p in parts], ignore_index=True),
                                  check_exact=True)
    assert _bits(pieces.contributions_at([5, 390])) == _bits(pieces.contributions[[5, 390]])


def test_elbo_contributions_on_demand_match_a_direct_computation() -> None:
    frame = _scoring_frame()
    model = fit_model(mixed_frame(500, seed=0), MIXED,
                      ModelSettings(hidden=(16,), latent=3, variant="vae", score="elbo"), _train("mse"))
    result = model.score(frame)
    direct = _direct(model, frame)
    with torch.inference_mode():
        x = torch.from_numpy(model.inputs(frame))
        rec = torch.from_numpy(direct["rec"])
        score = rec + model.spec.beta * model.network.kl_per_row(x).double() / model.spec.n_inputs
        contributions = torch.from_numpy(direct["shares"]) * score.unsqueeze(1)
    assert _bits(result.scores) == _bits(score.numpy())
    assert _bits(result.contributions_at([4, 0])) == _bits(contributions.numpy()[[4, 0]])
    assert _bits(result.contributions) == _bits(contributions.numpy())


@pytest.fixture(scope="module")
def numeric() -> FittedModel:
    frame = correlated_frame(400, seed=0)
    return fit_model(frame, Schema.infer(frame), ModelSettings(hidden=(16,), latent=2, score="reconstruction"),
                     _train("mse"))


def _numeric_frames() -> dict[str, pd.DataFrame]:
    frame = correlated_frame(300, seed=4)
    frame.iloc[5, 2] = 50.0
    frame.iloc[6, 0] = -1e300            # beyond float64 once scaled: clipped like any far value
    frame.iloc[8, 1] = 1e300
    return {
        "float": frame,
        "int": (frame.clip(-1e6, 1e6) * 10).round().astype(np.int64),
        "reordered": frame[list(reversed(frame.columns))],
        "extra column": frame.assign(other=1.0),
        "object column": frame.astype({"f3": object}),
    }


@pytest.mark.parametrize("name", list(_numeric_frames()))
def test_all_numeric_one_pass_equals_transform_and_out_of_range(numeric: FittedModel, name: str) -> None:
    frame = _numeric_frames()[name]
    result = numeric.score(frame)
    x = numeric.preprocessor.transform(frame)
    assert result.out_of_range is not None
    np.testing.assert_array_equal(result.out_of_range, numeric.out_of_range(frame))
    np.testing.assert_array_equal(result.out_of_range, _direct_masks(numeric, frame)[1])
    assert not result.unseen.any()
    direct = _direct(numeric, frame)
    assert _bits(numeric.inputs(frame)) == _bits(x)
    assert _bits(result.scores) == _bits(np.where(np.isnan(direct["rec"]), np.inf, direct["rec"]))
    assert _bits(result.contributions) == _bits(direct["contributions"])
    pd.testing.assert_frame_equal(result.expected, direct["expected"], check_exact=True)
    flagged = numeric.preprocessor.transform_flagged(frame, *numeric._range_bounds())
    if name == "object column":
        assert flagged is None
    else:
        assert flagged is not None
        assert _bits(flagged[0]) == _bits(x)
        np.testing.assert_array_equal(flagged[1], result.out_of_range)


@pytest.mark.parametrize("layout", ["row-major", "column-major"])
def test_the_one_pass_gives_the_same_in_many_chunks(numeric: FittedModel, monkeypatch: pytest.MonkeyPatch,
                                                     layout: str) -> None:
    monkeypatch.setattr(preprocess, "_CHUNK_ELEMENTS", 70)      # 11 rows of 6 features a chunk, the last of 3
    frame = _numeric_frames()["float"]
    if layout == "column-major":                # a frame built column by column: its block is column-major
        frame = pd.DataFrame({name: frame[name].to_numpy() for name in frame.columns})
    pre, bounds = numeric.preprocessor, numeric._range_bounds()
    flagged = pre.transform_flagged(frame, *bounds)
    assert flagged is not None
    assert _bits(flagged[0]) == _bits(pre.transform(frame))
    np.testing.assert_array_equal(flagged[1], numeric.out_of_range(frame))
    assert flagged[1][[5, 6, 8]].any(axis=1).all()
    frame.iloc[298, 1] = np.nan                 # in the last chunk: the column-by-column path names it
    assert pre.transform_flagged(frame, *bounds) is None


def test_all_numeric_missing_value_is_still_named(numeric: FittedModel) -> None:
    frame = correlated_frame(50, seed=4)
    frame.iloc[4, 3] = np.inf
    assert numeric.preprocessor.transform_flagged(frame, *numeric._range_bounds()) is None
    with pytest.raises(ValueError, match="'f3' is required"):
        numeric.score(frame)


def test_a_result_given_its_arrays_reads_them_back() -> None:
    contributions = np.arange(6.0).reshape(3, 2)
    expected = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [True, False, True]})
    result = ScoreResult(scores=np.array([1.0, 5.0, 9.0]), threshold=4.0, is_outlier=np.array([False, True, True]),
                         contributions=contributions, expected=expected, unseen=np.zeros((3, 2), dtype=bool),
                         feature_names=["a", "b"])
    assert result.contributions is contributions and result.expected is expected
    np.testing.assert_array_equal(result.contributions_at([2, 0]), contributions[[2, 0]])
    pd.testing.assert_frame_equal(result.expected_at([2, 0]), expected.iloc[[2, 0]])
    with pytest.raises(ValueError, match="1-D"):
        result.contributions_at(np.array([[0, 1]]))
