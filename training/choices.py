"""The allowed values of the training library's categorical settings.

One Literal type per setting (and, for those checked at run time, the tuple of its values), declared here
once: the library's settings classes and the daemon's config both use them. This module imports nothing
else, so a config parser can use it without loading torch.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ARCHS",
    "PER_KEY",
    "SCORE_KINDS",
    "SEARCHES",
    "THRESHOLD_METHODS",
    "VARIANTS",
    "Activation",
    "Arch",
    "LossName",
    "NoiseKind",
    "Scaling",
    "ScoreKind",
    "Search",
    "SequenceArch",
    "SparsityKind",
    "ThresholdMethod",
    "Variant",
]

# the autoencoder (training.model)
Activation = Literal["relu", "tanh", "gelu", "elu", "leaky_relu"]
Variant = Literal["dense", "denoising", "sparse", "contractive", "vae"]
SequenceArch = Literal["conv", "lstm"]      # the archs of sequence mode (window > 1)
Arch = Literal["dense", SequenceArch]
NoiseKind = Literal["gaussian", "mask"]
SparsityKind = Literal["l1", "kl"]
VARIANTS: tuple[str, ...] = get_args(Variant)
ARCHS: tuple[str, ...] = get_args(Arch)

# preprocessing (training.preprocess), training (training.loop), thresholds (training.thresholds)
Scaling = Literal["standard", "robust"]
LossName = Literal["mse", "l1", "bce"]
ThresholdMethod = Literal["quantile", "sigma", "mad", "pot"]
THRESHOLD_METHODS: tuple[str, ...] = get_args(ThresholdMethod)

# how a record's score is made (training.settings) and how the neighbour memory searches (training.memory)
ScoreKind = Literal["hybrid", "reconstruction", "elbo"]
Search = Literal["approximate", "exact"]
SCORE_KINDS: tuple[str, ...] = get_args(ScoreKind)
SEARCHES: tuple[str, ...] = get_args(Search)
PerKey = Literal["auto", "on", "off"]
PER_KEY: tuple[str, ...] = get_args(PerKey)
