"""Train a DenseAutoencoder with early stopping, and compute per-row reconstruction errors."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from training.choices import LossName
from training.errors import DivergedError, InsufficientDataError, TrainingError
from training.model import AutoencoderSpec, DenseAutoencoder

__all__ = [
    "MIN_TRAIN_ROWS",
    "EpochStats",
    "StopReason",
    "TrainOutcome",
    "TrainSettings",
    "resolve_device",
    "row_errors",
    "train_autoencoder",
]

logger = logging.getLogger(__name__)

StopReason = Literal["epochs", "patience", "max_seconds"]
_LOSSES: tuple[str, ...] = get_args(LossName)
MIN_TRAIN_ROWS = 8


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """How to train: optimiser, batching, early stopping, seed, loss and device."""

    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    min_delta: float = 1e-4
    validation_fraction: float = 0.2
    seed: int = 0
    loss: LossName = "mse"
    device: str = "auto"
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "weight_decay": self.weight_decay >= 0,
            "patience": self.patience >= 1,
            "min_delta": self.min_delta >= 0,
            "validation_fraction": 0.0 < self.validation_fraction < 1.0,
            "loss": self.loss in _LOSSES,
            "max_seconds": self.max_seconds is None or self.max_seconds > 0,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid TrainSettings.{field}: {getattr(self, field)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EpochStats:
    """One epoch's mean training loss, validation loss and duration."""

    epoch: int
    train_loss: float
    val_loss: float
    seconds: float


@dataclass(frozen=True)
class TrainOutcome:
    """A trained network (on CPU, eval mode, best validation weights) and how training went.

    `val_errors` [n_val] are the `row_errors` scores of the validation rows, never trained on.
    `stop_reason` says why training ended; `stopped_early` is `stop_reason != "epochs"`.
    """

    model: DenseAutoencoder
    history: list[EpochStats]
    best_epoch: int
    val_errors: npt.NDArray[np.float64]
    n_train: int
    n_val: int
    device: str
    stopped_early: bool
    seconds: float
    stop_reason: StopReason = "epochs"
    train_index: npt.NDArray[np.intp] | None = None
    val_index: npt.NDArray[np.intp] | None = None


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available else cpu; "cpu"; "cuda" / "cuda:N" (TrainingError without CUDA)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise TrainingError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise TrainingError(f"unsupported device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} was requested but CUDA is not available; use 'auto' or 'cpu'")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainingError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return device


def _check_matrix(x: npt.NDArray[np.float32], n_inputs: int) -> npt.NDArray[np.float32]:
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != n_inputs:
        shape = getattr(x, "shape", None)
        raise ValueError(f"expected an array of shape [n, {n_inputs}], got shape {shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _reconstruction_loss(
    logits: torch.Tensor, target: torch.Tensor, loss: LossName, sigmoid: bool
) -> torch.Tensor:
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target.clamp(0.0, 1.0))
    recon = torch.sigmoid(logits) if sigmoid else logits
    return F.mse_loss(recon, target) if loss == "mse" else F.l1_loss(recon, target)


def _batch_loss(model: DenseAutoencoder, xb: torch.Tensor, loss: LossName) -> torch.Tensor:
    """Mean validation loss of a minibatch: plain reconstruction (plus the KL term of a VAE)."""
    spec = model.spec
    mean, log_var = model.encode_full(xb)
    value = _reconstruction_loss(model.decode_logits(mean), xb, loss, spec.output == "sigmoid")
    if log_var is not None:
        value = value + spec.beta * _kl(mean, log_var).mean() / spec.n_inputs
    return value


def _kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(dim=1)


def _training_loss(model: DenseAutoencoder, xb: torch.Tensor, loss: LossName) -> torch.Tensor:
    """Mean training loss of a minibatch with the variant's corruption or penalty.

    denoising: reconstruct the clean rows from corrupted ones; sparse: + L1 of the code, or the KL
    divergence of each code unit's mean sigmoid activation from the target; contractive: + a
    one-sample finite-difference estimate of the encoder Jacobian's squared Frobenius norm,
    E_v ||J v||^2 with v ~ N(0, I); vae: reconstruction of a sampled code + beta * KL / n_inputs.
    """
    spec = model.spec
    sigmoid = spec.output == "sigmoid"
    if spec.variant == "vae":
        mean, log_var = model.encode_full(xb)
        if log_var is None:
            raise TrainingError("a vae network must give a log-variance")
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        recon = _reconstruction_loss(model.decode_logits(z), xb, loss, sigmoid)
        return recon + spec.beta * _kl(mean, log_var).mean() / spec.n_inputs
    inputs = xb
    if spec.variant == "denoising":
        if spec.noise == "gaussian":
            inputs = xb + spec.noise_level * torch.randn_like(xb)
        else:
            inputs = xb * (torch.rand_like(xb) >= spec.noise_level)
    code = model.encode(inputs)
    value = _reconstruction_loss(model.decode_logits(code), xb, loss, sigmoid)
    if spec.variant == "sparse":
        if spec.sparsity == "l1":
            value = value + spec.sparsity_weight * code.abs().mean()
        else:
            rho = spec.sparsity_target
            rho_hat = torch.sigmoid(code).mean(dim=0).clamp(1e-6, 1 - 1e-6)
            kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
            value = value + spec.sparsity_weight * kl.sum()
    elif spec.variant == "contractive":
        step = 1e-2
        direction = torch.randn_like(xb)
        moved = model.encode(xb + step * direction)
        jacobian_sq = (moved - code).square().sum(dim=1) / step**2
        value = value + spec.contractive_weight * jacobian_sq.mean()
    return value


def _train_epoch(
    model: DenseAutoencoder,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
) -> float:
    """One pass over shuffled minibatches of `x`; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(x), device=x.device, generator=generator)
    total = torch.zeros((), device=x.device)
    for start in range(0, len(x), settings.batch_size):
        xb = x[order[start : start + settings.batch_size]]
        loss = _training_loss(model, xb, settings.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += loss.detach() * len(xb)
    return float(total.item()) / len(x)


def _validation_loss(model: DenseAutoencoder, x: torch.Tensor, settings: TrainSettings) -> float:
    model.eval()
    total = torch.zeros((), device=x.device)
    with torch.inference_mode():
        for start in range(0, len(x), settings.batch_size):
            xb = x[start : start + settings.batch_size]
            total += _batch_loss(model, xb, settings.loss) * len(xb)
    return float(total.item()) / len(x)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for the block without changing the caller's global RNG state afterwards."""
    cuda: list[int] = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _split(n: int, fraction: float, seed: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Shuffled (train, validation) row indices; at least one row in each."""
    n_val = min(n - 1, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_autoencoder(
    x: npt.NDArray[np.float32],
    spec: AutoencoderSpec,
    settings: TrainSettings,
    on_epoch: Callable[[EpochStats], None] | None = None,
    holdout: npt.NDArray[np.intp] | None = None,
) -> TrainOutcome:
    """Train on the rows of `x` [n, spec.n_inputs], early-stopping on a held-out validation split.

    Deterministic on CPU for a given seed. The caller's global torch RNG state is left untouched.
    An exception raised by `on_epoch` aborts training and propagates (use it to cancel a run).
    `holdout` names the validation rows instead of a seeded `validation_fraction` split.
    """
    started = time.perf_counter()
    x = _check_matrix(x, spec.n_inputs)
    if settings.loss == "bce" and spec.output != "sigmoid":
        raise ValueError("loss 'bce' needs a spec with output='sigmoid'")
    if len(x) < MIN_TRAIN_ROWS:
        raise InsufficientDataError(len(x), MIN_TRAIN_ROWS)
    if not np.isfinite(x).all():
        raise ValueError("training input contains NaN or infinite values")
    device = resolve_device(settings.device)
    if holdout is None:
        train_idx, val_idx = _split(len(x), settings.validation_fraction, settings.seed)
    else:
        val_idx = np.unique(np.asarray(holdout, dtype=np.intp))
        if val_idx.size == 0 or val_idx.size >= len(x) or val_idx[0] < 0 or val_idx[-1] >= len(x):
            raise ValueError(f"holdout must name between 1 and {len(x) - 1} of the {len(x)} rows")
        train_idx = np.setdiff1d(np.arange(len(x)), val_idx)
    with _seeded(settings.seed, device):
        model = DenseAutoencoder(spec).to(device)  # initialised on CPU: same weights on every device
        x_train = torch.from_numpy(x[train_idx]).to(device)  # moved once, batches indexed there
        x_val = torch.from_numpy(x[val_idx]).to(device)
        best_epoch, history, reason = _fit(model, x_train, x_val, settings, started, on_epoch)
    model = model.cpu().eval()
    val_errors, _, _ = row_errors(model, x[val_idx], settings.loss, device="cpu")
    seconds = time.perf_counter() - started
    logger.info(
        "training finished",
        extra={"epochs_run": len(history), "best_epoch": best_epoch, "stop_reason": reason,
               "n_train": len(train_idx), "n_val": len(val_idx), "device": str(device),
               "duration_s": round(seconds, 3)},
    )
    return TrainOutcome(
        model=model, history=history, best_epoch=best_epoch, val_errors=val_errors,
        n_train=len(train_idx), n_val=len(val_idx), device=str(device),
        stopped_early=reason != "epochs", seconds=seconds, stop_reason=reason,
        train_index=train_idx, val_index=val_idx,
    )


def _fit(
    model: DenseAutoencoder,
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    settings: TrainSettings,
    started: float,
    on_epoch: Callable[[EpochStats], None] | None,
) -> tuple[int, list[EpochStats], StopReason]:
    """The epoch loop. Leaves the best validation weights in `model`."""
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    generator = torch.Generator(device=x_train.device).manual_seed(settings.seed)
    best_val, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[EpochStats] = []
    reason: StopReason = "epochs"
    for epoch in range(1, settings.epochs + 1):
        epoch_start = time.perf_counter()
        train_loss = _train_epoch(model, optimizer, x_train, settings, generator)
        val_loss = _validation_loss(model, x_val, settings)
        for which, value in (("training", train_loss), ("validation", val_loss)):
            if not math.isfinite(value):
                raise DivergedError(epoch, which, value)
        stats = EpochStats(epoch, train_loss, val_loss, time.perf_counter() - epoch_start)
        history.append(stats)
        logger.info(
            "training epoch",
            extra={"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "epoch_seconds": round(stats.seconds, 4)},
        )
        if on_epoch is not None:
            on_epoch(stats)
        if val_loss < best_val - settings.min_delta:
            best_val, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= settings.patience:
            reason = "patience"
            break
        if settings.max_seconds is not None and time.perf_counter() - started >= settings.max_seconds:
            reason = "max_seconds" if epoch < settings.epochs else "epochs"
            break
    model.load_state_dict(best_state)
    return best_epoch, history, reason


def row_errors(
    model: DenseAutoencoder,
    x: npt.NDArray[np.float32],
    loss: LossName,
    batch_size: int = 8192,
    device: str | torch.device = "cpu",
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Scores [n], reconstructions [n, d] and element errors [n, d] of inputs `x` [n, d].

    Element error: squared error for "mse" and "bce", absolute error for "l1", always against the
    unclipped inputs. Score: the row's mean element error. The caller's model is not modified: if it
    is in training mode or on another device, a copy is used.
    """
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    x = _check_matrix(x, model.spec.n_inputs)
    target = device if isinstance(device, torch.device) else resolve_device(device)
    net = _on_device(model, target)
    recon = np.empty(x.shape, dtype=np.float32)
    elem = np.empty(x.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[start : start + batch_size]).to(target)
            rb = net(xb)
            eb = (rb - xb).abs() if loss == "l1" else (rb - xb).square()
            recon[start : start + batch_size] = rb.float().cpu().numpy()
            elem[start : start + batch_size] = eb.float().cpu().numpy()
    scores: npt.NDArray[np.float64] = elem.mean(axis=1, dtype=np.float64)
    return scores, recon, elem


def _on_device(model: DenseAutoencoder, target: torch.device) -> DenseAutoencoder:
    current = next(model.parameters()).device
    same = current.type == target.type and (
        target.index is None or current.index is None or current.index == target.index
    )
    if same and not model.training:
        return model
    return copy.deepcopy(model).to(target).eval()
