"""The dense autoencoder and its JSON-able spec."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from training.choices import ARCHS, VARIANTS, Activation, NoiseKind, SparsityKind
from training.settings import NetworkSettings, network_values

__all__ = ["AutoencoderSpec", "DenseAutoencoder", "OutputKind", "count_parameters"]

logger = logging.getLogger(__name__)

OutputKind = Literal["linear", "sigmoid"]
_ACTIVATIONS: tuple[str, ...] = get_args(Activation)
_OUTPUTS: tuple[str, ...] = get_args(OutputKind)


@dataclass(frozen=True, slots=True)
class AutoencoderSpec(NetworkSettings):
    """The hyperparameters of a network (NetworkSettings, which describes them), the width of its input rows
    `n_inputs` and its `output` function; validated on construction.

    `arch` "dense" reads rows [n, n_inputs]. "conv" and "lstm" read windows of `window` consecutive
    records, flattened oldest first: n_inputs is window x `columns` (encoded columns per record).
    """

    n_inputs: int = field(kw_only=True)
    output: OutputKind = field(default="linear", kw_only=True)

    @classmethod
    def of(cls, network: NetworkSettings, n_inputs: int, output: OutputKind = "linear") -> AutoencoderSpec:
        """The spec of a network with `network`'s hyperparameters (those of a ModelSettings, say) reading
        rows of `n_inputs` columns."""
        values = network_values(network)
        values["hidden"] = tuple(values["hidden"])
        return cls(n_inputs=n_inputs, output=output, **values)

    def __post_init__(self) -> None:
        if not _is_int(self.n_inputs) or self.n_inputs < 1:
            raise ValueError(f"n_inputs must be a positive integer, got {self.n_inputs!r}")
        if not isinstance(self.hidden, tuple) or not all(_is_int(h) and h >= 1 for h in self.hidden):
            raise ValueError(f"hidden must be a tuple of positive integers, got {self.hidden!r}")
        if not _is_int(self.latent) or self.latent < 1:
            raise ValueError(f"latent must be a positive integer, got {self.latent!r}")
        choices: dict[str, tuple[object, tuple[str, ...]]] = {
            "activation": (self.activation, _ACTIVATIONS), "output": (self.output, _OUTPUTS),
            "variant": (self.variant, VARIANTS), "arch": (self.arch, ARCHS),
            "noise": (self.noise, get_args(NoiseKind)), "sparsity": (self.sparsity, get_args(SparsityKind)),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, value, low, high in (("dropout", self.dropout, 0.0, 1.0), ("noise_level", self.noise_level, 0.0, 1.0),
                                       ("sparsity_target", self.sparsity_target, 0.0, 1.0)):
            if not isinstance(value, int | float) or not low <= value < high:
                raise ValueError(f"{name} must be in [{low}, {high}), got {value!r}")
        for name, value in (("sparsity_weight", self.sparsity_weight), ("contractive_weight", self.contractive_weight),
                            ("beta", self.beta)):
            if not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not _is_int(self.window) or self.window < 1:
            raise ValueError(f"window must be a positive integer, got {self.window!r}")
        if (self.arch == "dense") != (self.window == 1):
            raise ValueError(f"arch {self.arch!r} does not fit window {self.window}: dense needs 1, conv/lstm > 1")
        if self.n_inputs % self.window:
            raise ValueError(f"n_inputs {self.n_inputs} is not a multiple of window {self.window}")
        if self.arch != "dense" and not self.hidden:
            raise ValueError(f"arch {self.arch!r} needs at least one hidden width")

    @property
    def columns(self) -> int:
        """Encoded columns per record (n_inputs / window)."""
        return self.n_inputs // self.window

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_inputs": self.n_inputs,
            "hidden": list(self.hidden),
            "latent": self.latent,
            "activation": self.activation,
            "output": self.output,
            "dropout": float(self.dropout),
            "variant": self.variant,
            "arch": self.arch,
            "window": self.window,
            "noise": self.noise,
            "noise_level": float(self.noise_level),
            "sparsity": self.sparsity,
            "sparsity_weight": float(self.sparsity_weight),
            "sparsity_target": float(self.sparsity_target),
            "contractive_weight": float(self.contractive_weight),
            "beta": float(self.beta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AutoencoderSpec:
        defaults = cls(n_inputs=1)
        extra = {name: d.get(name, getattr(defaults, name)) for name in _OPTIONAL_FIELDS}
        return cls(
            n_inputs=d["n_inputs"],
            hidden=tuple(d["hidden"]),
            latent=d["latent"],
            activation=d["activation"],
            output=d["output"],
            dropout=d["dropout"],
            **extra,
        )


_OPTIONAL_FIELDS = ("variant", "arch", "window", "noise", "noise_level", "sparsity", "sparsity_weight",
                    "sparsity_target", "contractive_weight", "beta")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _activation(name: Activation) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "gelu":
        return nn.GELU()
    if name == "elu":
        return nn.ELU()
    return nn.LeakyReLU(0.01)


def _stack(sizes: list[int], activation: Activation, dropout: float) -> nn.Sequential:
    """Linear layers through `sizes`, with activation (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DenseAutoencoder(nn.Module):
    """An autoencoder for the spec's arch: dense, or 1-D convolutional / LSTM over a window of records.

    Inputs and outputs are always flat [n, n_inputs]. `decoder` output is pre-activation; the sigmoid
    of a "sigmoid" spec is applied in `forward`, so the training loop can use the logits for a stable
    BCE loss. A "vae" encoder yields a mean and a log-variance; `encode` and `forward` use the mean
    (deterministic scoring), `sample_logits` draws a code for training.
    """

    def __init__(self, spec: AutoencoderSpec) -> None:
        super().__init__()
        self.spec = spec
        code = 2 * spec.latent if spec.variant == "vae" else spec.latent
        self.encoder: nn.Module
        self.decoder: nn.Module
        if spec.arch == "dense":
            sizes = [spec.n_inputs, *spec.hidden, spec.latent]
            self.encoder = _stack([*sizes[:-1], code], spec.activation, spec.dropout)
            self.decoder = _stack(sizes[::-1], spec.activation, spec.dropout)
        elif spec.arch == "conv":
            self.encoder = _ConvEncoder(spec, code)
            self.decoder = _ConvDecoder(spec)
        else:
            self.encoder = _LstmEncoder(spec, code)
            self.decoder = _LstmDecoder(spec)

    def _code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out: torch.Tensor = self.encoder(x)
        if self.spec.variant == "vae":
            mean, log_var = out.chunk(2, dim=-1)
            return mean, log_var.clamp(-20.0, 20.0)
        return out, None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes [n, latent] of inputs [n, n_inputs] (the mean for a VAE)."""
        return self._code(x)[0]

    def encode_full(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(code or mean [n, latent], log-variance [n, latent] for a VAE else None)."""
        return self._code(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(z)
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's output before the output function, shape [n, n_inputs]."""
        return self.decode_logits(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions [n, n_inputs] of inputs [n, n_inputs]."""
        out = self.logits(x)
        return torch.sigmoid(out) if self.spec.output == "sigmoid" else out

    def kl_per_row(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per row [n] for a VAE; zeros otherwise."""
        mean, log_var = self._code(x)
        if log_var is None:
            return torch.zeros(len(x), device=x.device, dtype=x.dtype)
        return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(dim=1)


class _ConvEncoder(nn.Module):
    """[n, W*C] -> [n, C, W] -> Conv1d stack (kernel 3, same length) -> flatten -> Linear -> code."""

    def __init__(self, spec: AutoencoderSpec, code: int) -> None:
        super().__init__()
        self.window, self.columns = spec.window, spec.columns
        channels = [spec.columns, *spec.hidden]
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=3, padding=1), _activation(spec.activation)]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * spec.window, code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x.reshape(len(x), self.window, self.columns).transpose(1, 2))
        out: torch.Tensor = self.head(h.flatten(1))
        return out


class _ConvDecoder(nn.Module):
    def __init__(self, spec: AutoencoderSpec) -> None:
        super().__init__()
        self.window, self.width = spec.window, spec.hidden[-1]
        self.head = nn.Linear(spec.latent, spec.hidden[-1] * spec.window)
        channels = [*spec.hidden[::-1], spec.columns]
        layers: list[nn.Module] = [_activation(spec.activation)]
        for i, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
            layers.append(nn.Conv1d(c_in, c_out, kernel_size=3, padding=1))
            if i < len(channels) - 2:
                layers.append(_activation(spec.activation))
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).reshape(len(z), self.width, self.window)
        out: torch.Tensor = self.convs(h).transpose(1, 2).flatten(1)
        return out


class _LstmEncoder(nn.Module):
    """[n, W*C] -> LSTM over the W steps -> last hidden state -> Linear -> code."""

    def __init__(self, spec: AutoencoderSpec, code: int) -> None:
        super().__init__()
        self.window, self.columns = spec.window, spec.columns
        self.lstm = nn.LSTM(spec.columns, spec.hidden[0], num_layers=len(spec.hidden), batch_first=True)
        self.head = nn.Linear(spec.hidden[0], code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x.reshape(len(x), self.window, self.columns))
        out: torch.Tensor = self.head(h[-1])
        return out


class _LstmDecoder(nn.Module):
    """code -> Linear -> repeated W times -> LSTM -> Linear per step -> [n, W*C]."""

    def __init__(self, spec: AutoencoderSpec) -> None:
        super().__init__()
        self.window = spec.window
        self.head = nn.Linear(spec.latent, spec.hidden[0])
        self.lstm = nn.LSTM(spec.hidden[0], spec.hidden[0], num_layers=len(spec.hidden), batch_first=True)
        self.out = nn.Linear(spec.hidden[0], spec.columns)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).unsqueeze(1).expand(-1, self.window, -1)
        steps, _ = self.lstm(h.contiguous())
        out: torch.Tensor = self.out(steps).flatten(1)
        return out


def count_parameters(spec: AutoencoderSpec) -> int:
    """Trainable parameters (weights and biases) of the autoencoder `spec` describes."""
    return sum(p.numel() for p in DenseAutoencoder(spec).parameters())
