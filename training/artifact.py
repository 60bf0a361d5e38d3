"""Model artifact pieces: the versioned metadata envelope and the safetensors weights."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import safetensors.torch
import torch

from training.errors import ArtifactError
from training.model import AutoencoderSpec, DenseAutoencoder

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_KEYS",
    "check_envelope",
    "network_from_bytes",
    "network_to_bytes",
    "read_part",
]

logger = logging.getLogger(__name__)

FORMAT = "vigil-model"
FORMAT_VERSION = 1
META_KEYS = ("format", "format_version", "schema", "preprocessor", "spec", "loss", "threshold", "report")

T = TypeVar("T")


def check_envelope(meta: Mapping[str, Any]) -> None:
    """ArtifactError unless `meta` is a format-1 vigil-model envelope with every part present."""
    if not isinstance(meta, Mapping):
        raise ArtifactError(f"metadata must be a mapping, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ArtifactError(
            f"format_version is {version!r}, this version of Vigil reads only {FORMAT_VERSION}; "
            "retrain the model"
        )
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise ArtifactError(f"metadata lacks {', '.join(missing)}")


def read_part(meta: Mapping[str, Any], key: str, parse: Callable[[Any], T]) -> T:
    """`parse(meta[key])`, turning any parsing failure into an ArtifactError naming the part."""
    try:
        return parse(meta[key])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"bad {key!r}: {type(exc).__name__}: {exc}") from exc


def network_to_bytes(network: DenseAutoencoder, extra: Mapping[str, torch.Tensor] | None = None) -> bytes:
    """The network's state_dict (and `extra` named tensors) as safetensors bytes (CPU, contiguous)."""
    state = {name: t.detach().cpu().contiguous() for name, t in network.state_dict().items()}
    for name, tensor in (extra or {}).items():
        if name in state:
            raise ValueError(f"extra tensor {name!r} clashes with a network weight")
        state[name] = tensor.detach().cpu().contiguous()
    data: bytes = safetensors.torch.save(state)
    return data


def network_from_bytes(
    weights: bytes, spec: AutoencoderSpec, optional: tuple[str, ...] = ()
) -> tuple[DenseAutoencoder, dict[str, torch.Tensor]]:
    """A network built from `spec` with `weights` loaded, and the `optional` extra tensors found.

    ArtifactError if the network's names or shapes differ, or a tensor is not floating point.
    """
    try:
        tensors: dict[str, torch.Tensor] = safetensors.torch.load(bytes(weights))
    except Exception as exc:  # safetensors raises its own SafetensorError and others on bad bytes
        raise ArtifactError(f"weights are not readable safetensors data: {exc}") from exc
    extra = {name: tensors.pop(name) for name in optional if name in tensors}
    if any(not t.is_floating_point() for t in extra.values()):
        raise ArtifactError(f"extra tensors must be floating point: {sorted(extra)}")
    network = DenseAutoencoder(spec)
    expected = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if found != expected:
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        wrong = sorted(n for n in set(found) & set(expected) if found[n] != expected[n])
        details = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                   "wrong shape " + ", ".join(f"{n} {found[n]} != {expected[n]}" for n in wrong)
                   if wrong else ""]
        raise ArtifactError("weights do not match the spec: " + "; ".join(d for d in details if d))
    bad_dtype = sorted(name for name, t in tensors.items() if not t.is_floating_point())
    if bad_dtype:
        raise ArtifactError(f"weights must be floating point tensors: {bad_dtype}")
    network.load_state_dict(tensors)
    return network.eval(), extra
