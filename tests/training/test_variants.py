"""Autoencoder variants (dense, denoising, sparse, contractive, vae) with each score kind: planted anomalies
score above normal data, seeded runs and artifacts reproduce scores exactly, explanations blame the broken
feature, and each variant's training term does what it claims."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tests.training._data import auc
from training.choices import VARIANTS
from training.fit import fit_model
from training.fitted import FittedModel
from training.loop import TrainSettings, _training_loss, train_autoencoder
from training.model import AutoencoderSpec, DenseAutoencoder
from training.schema import Schema
from training.settings import ModelSettings, ThresholdSettings

FEATURES = ["x", "y", "u", "v", "z"]
BROKEN = FEATURES.index("y")
FAST = TrainSettings(epochs=30, batch_size=64, learning_rate=3e-3, patience=30, device="cpu", seed=0)
# calibrate the threshold on the validation split: one network per fit keeps these tests fast
ONE_NETWORK = ThresholdSettings(calibration_folds=1)
# beta 1 with a 2-unit code blurs this 2-factor data too much for a clean separation in 30 epochs
VAE_BETA = 0.1
CASES = [(variant, score) for variant in VARIANTS
         for score in ("hybrid", "reconstruction", *(("elbo",) if variant == "vae" else ()))]


def frame(n: int, seed: int) -> pd.DataFrame:
    """Two latent factors a, b: x = a, y = 2a, u = a + b, v = a - b, z = b, each plus N(0, 0.1) noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    values = np.column_stack([a, 2 * a, a + b, a - b, b]) + rng.normal(0.0, 0.1, size=(n, 5))
    return pd.DataFrame(values, columns=FEATURES)


TRAIN = frame(800, 0)
SCHEMA = Schema.infer(TRAIN)
NORMAL = frame(400, 1)


def planted() -> pd.DataFrame:
    """10 rows with the y = 2x relation broken (y + 3: about 1.5 std, inside y's range), 10 with y far out (+10)."""
    rows = frame(20, 2)
    rows.loc[:9, "y"] += 3.0
    rows.loc[10:, "y"] += 10.0
    return rows


def settings(variant: str, score: str, **extra: object) -> ModelSettings:
    beta = VAE_BETA if variant == "vae" else 1.0
    return ModelSettings(hidden=(16,), latent=2, variant=variant, score=score, beta=beta,   # type: ignore[arg-type]
                         **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fitted() -> Callable[[str, str], FittedModel]:
    cache: dict[tuple[str, str], FittedModel] = {}

    def get(variant: str, score: str) -> FittedModel:
        if (variant, score) not in cache:
            cache[variant, score] = fit_model(TRAIN, SCHEMA, settings(variant, score), FAST, ONE_NETWORK)
        return cache[variant, score]

    return get


# --- fitted models ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "score"), CASES)
def test_planted_anomalies_score_above_normal_rows(
    fitted: Callable[[str, str], FittedModel], variant: str, score: str,
) -> None:
    model = fitted(variant, score)
    assert model.spec.variant == variant
    assert model.scoring.kind == score
    normal = model.score(NORMAL)
    bad = model.score(planted())
    assert bad.scores.min() > np.quantile(normal.scores, 0.99)
    assert auc(normal.scores, bad.scores) >= 0.99
    assert bad.is_outlier.all()
    assert float(np.mean(normal.is_outlier)) <= 0.04        # target 1 %, 400 fresh rows
    assert (normal.scores > 0).all()


@pytest.mark.parametrize(("variant", "score"), CASES)
def test_contributions_sum_to_scores_and_blame_the_broken_feature(
    fitted: Callable[[str, str], FittedModel], variant: str, score: str,
) -> None:
    model = fitted(variant, score)
    result = model.score(planted())
    np.testing.assert_allclose(result.contributions.sum(axis=1), result.scores, rtol=1e-9)
    assert (result.contributions >= 0).all()
    top = result.contributions.argmax(axis=1)
    assert float(np.mean(top == BROKEN)) >= 0.9
    assert result.contributions.mean(axis=0).argmax() == BROKEN
    assert result.top_contributions(15, {}, k=1)[0]["feature"] == "y"   # a far-out y
    normal = model.score(NORMAL.iloc[:100])
    np.testing.assert_allclose(normal.contributions.sum(axis=1), normal.scores, rtol=1e-9)
    if score == "hybrid":
        assert normal.components is not None and set(normal.components) == (
            {"reconstruction", "distance", "density"} | ({"wide"} if model.scoring.has_wide else set()))
    else:
        assert normal.components is None


@pytest.mark.parametrize(("variant", "score"), CASES)
def test_a_seeded_run_is_reproducible(fitted: Callable[[str, str], FittedModel], variant: str, score: str) -> None:
    model = fitted(variant, score)
    again = fit_model(TRAIN, SCHEMA, settings(variant, score), FAST, ONE_NETWORK)
    rows = pd.concat([NORMAL.iloc[:100], planted()], ignore_index=True)
    np.testing.assert_array_equal(again.score(rows).scores, model.score(rows).scores)
    np.testing.assert_array_equal(again.score(rows).contributions, model.score(rows).contributions)
    assert again.threshold == model.threshold
    assert again.val_scores is not None and model.val_scores is not None
    np.testing.assert_array_equal(again.val_scores, model.val_scores)
    for name, tensor in model.network.state_dict().items():
        assert again.network.state_dict()[name].equal(tensor), name


def test_out_of_fold_calibration_is_reproducible_and_uses_every_row() -> None:
    """The default threshold calibration trains a network per fold; a seeded VAE run still repeats exactly."""
    train = TrainSettings(**{**FAST.to_dict(), "epochs": 8})
    first = fit_model(TRAIN, SCHEMA, settings("vae", "hybrid"), train)
    second = fit_model(TRAIN, SCHEMA, settings("vae", "hybrid"), train)
    assert first.threshold.n_holdout == len(TRAIN) == first.report["n_rows"]
    assert first.val_scores is not None and second.val_scores is not None
    assert len(first.val_scores) == len(TRAIN)
    np.testing.assert_array_equal(second.val_scores, first.val_scores)
    assert second.threshold == first.threshold
    rows = pd.concat([NORMAL.iloc[:100], planted()], ignore_index=True)
    np.testing.assert_array_equal(second.score(rows).scores, first.score(rows).scores)


@pytest.mark.parametrize("variant", VARIANTS)
def test_another_seed_gives_another_model(fitted: Callable[[str, str], FittedModel], variant: str) -> None:
    model = fitted(variant, "reconstruction")
    other = fit_model(TRAIN, SCHEMA, settings(variant, "reconstruction"),
                      TrainSettings(**{**FAST.to_dict(), "seed": 1}), ONE_NETWORK)
    assert not np.array_equal(other.score(NORMAL).scores, model.score(NORMAL).scores)


@pytest.mark.parametrize(("variant", "score"), CASES)
def test_artifact_round_trip_reproduces_scores_exactly(
    fitted: Callable[[str, str], FittedModel], variant: str, score: str,
) -> None:
    model = fitted(variant, score)
    weights, meta = model.to_artifact()
    meta = json.loads(json.dumps(meta, allow_nan=False))
    assert meta["spec"]["variant"] == variant
    assert meta["scoring"]["kind"] == score
    loaded = FittedModel.from_artifact(weights, meta)
    assert loaded.spec == model.spec
    assert loaded.scoring == model.scoring
    assert loaded.threshold == model.threshold
    rows = pd.concat([NORMAL.iloc[:100], planted()], ignore_index=True)
    before, after = model.score(rows), loaded.score(rows)
    np.testing.assert_array_equal(after.scores, before.scores)
    np.testing.assert_array_equal(after.contributions, before.contributions)
    np.testing.assert_array_equal(after.is_outlier, before.is_outlier)
    pd.testing.assert_frame_equal(after.expected, before.expected)
    if before.components is not None:
        assert after.components is not None
        for name, values in before.components.items():
            np.testing.assert_array_equal(after.components[name], values)


def test_elbo_adds_the_weighted_kl_to_the_reconstruction(fitted: Callable[[str, str], FittedModel]) -> None:
    elbo, recon = fitted("vae", "elbo"), fitted("vae", "reconstruction")
    for name, tensor in recon.network.state_dict().items():   # the score kind does not change training
        assert elbo.network.state_dict()[name].equal(tensor), name
    rows = pd.concat([NORMAL, planted()], ignore_index=True)
    e, r = elbo.score(rows).scores, recon.score(rows).scores
    with torch.inference_mode():
        kl = elbo.network.kl_per_row(torch.from_numpy(elbo.inputs(rows))).double().numpy()
    assert (kl > 0).all()
    assert (e >= r).all()
    np.testing.assert_allclose(e - r, VAE_BETA * kl / elbo.spec.n_inputs, rtol=1e-6, atol=1e-12)


def test_elbo_needs_a_vae() -> None:
    for variant in VARIANTS:
        if variant != "vae":
            with pytest.raises(ValueError, match="'elbo' needs variant 'vae'"):
                ModelSettings(variant=variant, score="elbo")   # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score must be one of"):
        ModelSettings(score="likelihood")   # type: ignore[arg-type]


# --- the training terms ----------------------------------------------------------------------------


def _matrix() -> npt.NDArray[np.float32]:
    values: npt.NDArray[np.float64] = TRAIN.to_numpy(dtype=np.float64)
    scaled: npt.NDArray[np.float32] = ((values - values.mean(axis=0)) / values.std(axis=0)).astype(np.float32)
    return scaled


X = _matrix()


def _train(**options: object) -> DenseAutoencoder:
    spec = AutoencoderSpec(n_inputs=5, hidden=(16,), latent=2, **options)   # type: ignore[arg-type]
    return train_autoencoder(X, spec, FAST).model


@pytest.fixture(scope="module")
def dense() -> DenseAutoencoder:
    return _train()


def _same_weights(a: DenseAutoencoder, b: DenseAutoencoder) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].equal(sb[k]) for k in sa)


def _codes(model: DenseAutoencoder) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(torch.from_numpy(X))


@pytest.mark.parametrize(
    "options",
    [
        {"variant": "denoising", "noise": "mask", "noise_level": 0.0},
        {"variant": "denoising", "noise": "gaussian", "noise_level": 0.0},
        {"variant": "sparse", "sparsity": "l1", "sparsity_weight": 0.0},
        {"variant": "sparse", "sparsity": "kl", "sparsity_weight": 0.0},
        {"variant": "contractive", "contractive_weight": 0.0},
    ],
)
def test_a_variant_with_its_term_switched_off_trains_exactly_like_dense(
    dense: DenseAutoencoder, options: dict[str, object],
) -> None:
    """The control for the tests below: the variant's term is the only difference from a plain autoencoder."""
    assert _same_weights(_train(**options), dense)


def test_denoising_with_masking_learns_to_fill_in_dropped_inputs(dense: DenseAutoencoder) -> None:
    denoising = _train(variant="denoising", noise="mask", noise_level=0.5)
    assert not _same_weights(denoising, dense)
    keep = np.random.default_rng(5).random(X.shape) >= 0.5
    corrupted = torch.from_numpy(np.where(keep, X, 0.0).astype(np.float32))
    clean = torch.from_numpy(X)
    with torch.inference_mode():
        filled = float(F.mse_loss(denoising(corrupted), clean))
        plain = float(F.mse_loss(dense(corrupted), clean))
    assert filled < 0.85 * plain


def test_sparse_l1_shrinks_the_code(dense: DenseAutoencoder) -> None:
    sparse = _train(variant="sparse", sparsity="l1", sparsity_weight=1.0)
    assert float(_codes(sparse).abs().mean()) < 0.5 * float(_codes(dense).abs().mean())


def test_sparse_kl_pulls_mean_activations_to_the_target(dense: DenseAutoencoder) -> None:
    sparse = _train(variant="sparse", sparsity="kl", sparsity_weight=1.0, sparsity_target=0.05)
    activation = torch.sigmoid(_codes(sparse)).mean(dim=0)
    assert float((activation - 0.05).abs().max()) < 0.05
    assert float(torch.sigmoid(_codes(dense)).mean(dim=0).min()) > 0.15


def _sensitivity(model: DenseAutoencoder, step: float = 1e-3) -> float:
    """Mean squared Frobenius norm of the encoder's Jacobian, by finite differences along each input."""
    x = torch.from_numpy(X).double()
    net = _double(model)
    with torch.inference_mode():
        code = net.encode(x)
        total = torch.zeros(len(x), dtype=torch.float64)
        for i in range(x.shape[1]):
            moved = x.clone()
            moved[:, i] += step
            total += (net.encode(moved) - code).square().sum(dim=1) / step**2
    return float(total.mean())


def _double(model: DenseAutoencoder) -> DenseAutoencoder:
    copy = DenseAutoencoder(model.spec).double()
    copy.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    return copy.eval()


def test_contractive_shrinks_the_encoder_sensitivity(dense: DenseAutoencoder) -> None:
    contractive = _train(variant="contractive", contractive_weight=1.0)
    assert _sensitivity(contractive) < 0.2 * _sensitivity(dense)


def test_vae_kl_is_positive_for_every_row_and_zero_without_a_vae(dense: DenseAutoencoder) -> None:
    vae = _train(variant="vae", beta=1.0)
    with torch.inference_mode():
        kl = vae.kl_per_row(torch.from_numpy(X))
        none = dense.kl_per_row(torch.from_numpy(X))
        mean, log_var = vae.encode_full(torch.from_numpy(X))
    assert kl.shape == (len(X),)
    assert (kl > 0).all()
    assert log_var is not None
    np.testing.assert_allclose(kl.numpy(), 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(dim=1).numpy(),
                               rtol=1e-6)
    assert torch.equal(none, torch.zeros(len(X)))
    assert dense.encode_full(torch.from_numpy(X))[1] is None
    assert mean.shape == log_var.shape == (len(X), vae.spec.latent)   # the encoder gives both


# --- _training_loss against a reference computation -------------------------------------------------


def _reference_loss(model: DenseAutoencoder, xb: torch.Tensor) -> torch.Tensor:
    """The documented training objective, written out; uses the global RNG in the same order."""
    spec = model.spec
    if spec.variant == "vae":
        mean, log_var = model.encode_full(xb)
        assert log_var is not None
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        kl = 0.5 * (mean**2 + torch.exp(log_var) - 1.0 - log_var).sum(dim=1)
        return F.mse_loss(model.decode_logits(z), xb) + spec.beta * kl.mean() / spec.n_inputs
    inputs = xb
    if spec.variant == "denoising" and spec.noise == "gaussian":
        inputs = xb + spec.noise_level * torch.randn_like(xb)
    elif spec.variant == "denoising":
        dropped = torch.rand_like(xb) < spec.noise_level
        inputs = torch.where(dropped, torch.zeros_like(xb), xb)
    code = model.encode(inputs)
    loss = F.mse_loss(model.decode_logits(code), xb)
    if spec.variant == "sparse" and spec.sparsity == "l1":
        loss = loss + spec.sparsity_weight * code.abs().mean()
    elif spec.variant == "sparse":
        rho, rho_hat = spec.sparsity_target, torch.sigmoid(code).mean(dim=0)
        loss = loss + spec.sparsity_weight * (rho * torch.log(rho / rho_hat)
                                              + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
    elif spec.variant == "contractive":
        v = torch.randn_like(xb)
        loss = loss + spec.contractive_weight * ((model.encode(xb + 1e-2 * v) - code) ** 2).sum(dim=1).mean() / 1e-4
    return loss


@pytest.mark.parametrize(
    "options",
    [
        {"variant": "dense"},
        {"variant": "denoising", "noise": "gaussian", "noise_level": 0.3},
        {"variant": "denoising", "noise": "mask", "noise_level": 0.5},
        {"variant": "sparse", "sparsity": "l1", "sparsity_weight": 0.5},
        {"variant": "sparse", "sparsity": "kl", "sparsity_weight": 0.5, "sparsity_target": 0.1},
        {"variant": "contractive", "contractive_weight": 0.5},
        {"variant": "vae", "beta": 2.0},
    ],
)
def test_training_loss_matches_the_documented_objective(options: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = DenseAutoencoder(AutoencoderSpec(n_inputs=5, hidden=(16,), latent=2, **options))  # type: ignore[arg-type]
    xb = torch.from_numpy(X[:64])
    with torch.random.fork_rng():
        torch.manual_seed(123)
        actual = _training_loss(model, xb, "mse")
    with torch.random.fork_rng():
        torch.manual_seed(123)
        expected = _reference_loss(model, xb)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        plain = F.mse_loss(model.logits(xb), xb)
    actual = actual.detach()
    if options["variant"] == "dense":
        torch.testing.assert_close(actual, plain, rtol=1e-6, atol=0.0)
    else:
        assert abs(float(actual) - float(plain)) > 1e-4   # the term changes the objective
