"""Training loop: devices, determinism, early stopping, divergence, row errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training._data import correlated_frame
from training.errors import DivergedError, InsufficientDataError, TrainingError
from training.loop import EpochStats, TrainSettings, resolve_device, row_errors, train_autoencoder
from training.model import AutoencoderSpec, DenseAutoencoder

SPEC = AutoencoderSpec(n_inputs=6, hidden=(16,), latent=2)
QUICK = TrainSettings(epochs=5, batch_size=64, device="cpu", seed=3)


def _x(n: int = 400, seed: int = 0) -> np.ndarray:
    return correlated_frame(n, seed).to_numpy(dtype=np.float32)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TrainingError, match="'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_clear_error(name: str) -> None:
    with pytest.raises(TrainingError, match="CUDA is not available"):
        resolve_device(name)


def test_training_is_deterministic_for_a_seed_on_cpu() -> None:
    first = train_autoencoder(_x(), SPEC, QUICK)
    second = train_autoencoder(_x(), SPEC, QUICK)
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [s.train_loss for s in first.history] == [s.train_loss for s in second.history]
    np.testing.assert_array_equal(first.val_errors, second.val_errors)
    other = train_autoencoder(_x(), SPEC, TrainSettings(epochs=5, batch_size=64, device="cpu", seed=4))
    assert other.history[-1].train_loss != first.history[-1].train_loss


def test_training_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_autoencoder(_x(), SPEC, QUICK)
    torch.testing.assert_close(torch.rand(3), expected)


def test_outcome_describes_the_split_and_the_model() -> None:
    outcome = train_autoencoder(_x(50), SPEC, QUICK)
    assert (outcome.n_train, outcome.n_val) == (40, 10)
    assert outcome.val_errors.shape == (10,)
    assert outcome.val_errors.dtype == np.float64
    assert outcome.device == "cpu"
    assert not outcome.model.training
    assert next(outcome.model.parameters()).device.type == "cpu"
    assert [s.epoch for s in outcome.history] == [1, 2, 3, 4, 5]
    assert outcome.stop_reason == "epochs"
    assert not outcome.stopped_early


def test_loss_decreases_and_best_weights_are_restored() -> None:
    settings = TrainSettings(epochs=40, batch_size=64, learning_rate=3e-3, device="cpu", patience=5)
    outcome = train_autoencoder(_x(), SPEC, settings)
    assert outcome.history[-1].train_loss < 0.5 * outcome.history[0].train_loss
    best = outcome.history[outcome.best_epoch - 1]
    assert best.val_loss == min(s.val_loss for s in outcome.history)
    # for mse the validation loss is the mean of the rows' scores, so this checks the restored weights
    assert float(np.mean(outcome.val_errors)) == pytest.approx(best.val_loss, rel=1e-4)


def test_early_stopping_stops_after_patience_epochs_without_improvement() -> None:
    settings = TrainSettings(epochs=50, batch_size=64, device="cpu", patience=3, min_delta=1e6)
    seen: list[EpochStats] = []
    outcome = train_autoencoder(_x(), SPEC, settings, on_epoch=seen.append)
    assert len(outcome.history) == 4
    assert outcome.best_epoch == 1
    assert outcome.stopped_early
    assert outcome.stop_reason == "patience"
    assert seen == outcome.history


def test_max_seconds_stops_training() -> None:
    settings = TrainSettings(epochs=50, device="cpu", max_seconds=1e-9)
    outcome = train_autoencoder(_x(), SPEC, settings)
    assert len(outcome.history) == 1
    assert outcome.stop_reason == "max_seconds"


def test_an_exception_in_on_epoch_aborts_training() -> None:
    def cancel(stats: EpochStats) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(_x(), SPEC, QUICK, on_epoch=cancel)


def test_divergence_names_the_epoch() -> None:
    x = _x() * np.float32(1e18)
    with pytest.raises(DivergedError, match="epoch 1") as info:
        train_autoencoder(x, SPEC, QUICK)
    assert isinstance(info.value, TrainingError)
    assert info.value.epoch == 1


def test_too_few_rows_is_insufficient_data() -> None:
    with pytest.raises(InsufficientDataError, match="got 7, need at least 8"):
        train_autoencoder(_x(7), SPEC, QUICK)


def test_non_finite_input_and_wrong_width_are_refused() -> None:
    x = _x()
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_autoencoder(x, SPEC, QUICK)
    with pytest.raises(ValueError, match=r"\[n, 6\]"):
        train_autoencoder(_x()[:, :5], SPEC, QUICK)


def test_bce_trains_on_logits_and_needs_a_sigmoid_output() -> None:
    x = np.clip(_x() / 6.0 + 0.5, 0.0, 1.0).astype(np.float32)
    with pytest.raises(ValueError, match="sigmoid"):
        train_autoencoder(x, SPEC, TrainSettings(loss="bce", device="cpu"))
    spec = AutoencoderSpec(n_inputs=6, hidden=(16,), latent=2, output="sigmoid")
    outcome = train_autoencoder(x, spec, TrainSettings(epochs=10, batch_size=64, loss="bce", device="cpu"))
    assert np.isfinite(outcome.val_errors).all()
    assert outcome.history[-1].train_loss < outcome.history[0].train_loss


@pytest.mark.parametrize("field", ["epochs", "batch_size", "patience", "validation_fraction"])
def test_settings_validation_names_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainSettings(**{field: 0})  # type: ignore[arg-type]


def test_row_errors_per_loss_and_independent_of_batch_size() -> None:
    torch.manual_seed(0)
    net = DenseAutoencoder(SPEC).eval()
    x = _x(100)
    with torch.inference_mode():
        recon_expected = net(torch.from_numpy(x)).numpy()
    for loss, element in (("mse", np.square), ("bce", np.square), ("l1", np.abs)):
        scores, recon, elem = row_errors(net, x, loss)  # type: ignore[arg-type]
        np.testing.assert_allclose(recon, recon_expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(elem, element(recon_expected - x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores, elem.mean(axis=1, dtype=np.float64))
        small_batches, _, _ = row_errors(net, x, loss, batch_size=7)  # type: ignore[arg-type]
        np.testing.assert_allclose(small_batches, scores, rtol=1e-6)  # BLAS blocking differs


def test_row_errors_does_not_change_the_model_mode() -> None:
    net = DenseAutoencoder(AutoencoderSpec(n_inputs=6, dropout=0.5)).train()
    first, _, _ = row_errors(net, _x(20), "mse")
    second, _, _ = row_errors(net, _x(20), "mse")
    np.testing.assert_array_equal(first, second)  # dropout off while scoring
    assert net.training
