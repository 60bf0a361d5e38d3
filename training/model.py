"""The dense autoencoder and its JSON-able spec."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

__all__ = ["Activation", "AutoencoderSpec", "DenseAutoencoder", "count_parameters"]

logger = logging.getLogger(__name__)

Activation = Literal["relu", "tanh", "gelu", "elu", "leaky_relu"]
OutputKind = Literal["linear", "sigmoid"]
_ACTIVATIONS: tuple[str, ...] = get_args(Activation)
_OUTPUTS: tuple[str, ...] = get_args(OutputKind)


@dataclass(frozen=True, slots=True)
class AutoencoderSpec:
    """Layer sizes and options of a DenseAutoencoder; validated on construction."""

    n_inputs: int
    hidden: tuple[int, ...] = (64, 32)
    latent: int = 8
    activation: Activation = "relu"
    output: OutputKind = "linear"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not _is_int(self.n_inputs) or self.n_inputs < 1:
            raise ValueError(f"n_inputs must be a positive integer, got {self.n_inputs!r}")
        if not isinstance(self.hidden, tuple) or not all(_is_int(h) and h >= 1 for h in self.hidden):
            raise ValueError(f"hidden must be a tuple of positive integers, got {self.hidden!r}")
        if not _is_int(self.latent) or self.latent < 1:
            raise ValueError(f"latent must be a positive integer, got {self.latent!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        if self.output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {self.output!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_inputs": self.n_inputs,
            "hidden": list(self.hidden),
            "latent": self.latent,
            "activation": self.activation,
            "output": self.output,
            "dropout": float(self.dropout),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AutoencoderSpec:
        return cls(
            n_inputs=d["n_inputs"],
            hidden=tuple(d["hidden"]),
            latent=d["latent"],
            activation=d["activation"],
            output=d["output"],
            dropout=d["dropout"],
        )


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
    """n_inputs -> hidden... -> latent -> reversed hidden... -> n_inputs, then the output function.

    `decoder` ends in a plain linear layer; the sigmoid of a "sigmoid" spec is applied in `forward`,
    so the training loop can use the logits (`decoder(encoder(x))`) for a stable BCE loss.
    """

    def __init__(self, spec: AutoencoderSpec) -> None:
        super().__init__()
        self.spec = spec
        sizes = [spec.n_inputs, *spec.hidden, spec.latent]
        self.encoder = _stack(sizes, spec.activation, spec.dropout)
        self.decoder = _stack(sizes[::-1], spec.activation, spec.dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes [n, latent] of inputs [n, n_inputs]."""
        z: torch.Tensor = self.encoder(x)
        return z

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's output before the output function, shape [n, n_inputs]."""
        out: torch.Tensor = self.decoder(self.encoder(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions [n, n_inputs] of inputs [n, n_inputs]."""
        out = self.logits(x)
        return torch.sigmoid(out) if self.spec.output == "sigmoid" else out


def count_parameters(spec: AutoencoderSpec) -> int:
    """Trainable parameters (weights and biases) of the autoencoder `spec` describes."""
    sizes = [spec.n_inputs, *spec.hidden, spec.latent]
    encoder = sum(a * b + b for a, b in itertools.pairwise(sizes))
    decoder = sum(a * b + b for a, b in itertools.pairwise(sizes[::-1]))
    return encoder + decoder
