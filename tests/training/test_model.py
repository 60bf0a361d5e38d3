"""AutoencoderSpec validation and DenseAutoencoder structure."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from training.model import AutoencoderSpec, DenseAutoencoder


def test_shapes_of_forward_and_encode() -> None:
    net = DenseAutoencoder(AutoencoderSpec(n_inputs=11, hidden=(16, 8), latent=3))
    x = torch.randn(5, 11)
    assert net(x).shape == (5, 11)
    assert net.encode(x).shape == (5, 3)


def test_layers_mirror_and_no_activation_after_latent_or_output() -> None:
    net = DenseAutoencoder(AutoencoderSpec(n_inputs=10, hidden=(6, 4), latent=2, activation="tanh"))
    enc = [(m.in_features, m.out_features) for m in net.encoder if isinstance(m, nn.Linear)]
    dec = [(m.in_features, m.out_features) for m in net.decoder if isinstance(m, nn.Linear)]
    assert enc == [(10, 6), (6, 4), (4, 2)]
    assert dec == [(2, 4), (4, 6), (6, 10)]
    assert isinstance(net.encoder[-1], nn.Linear)
    assert isinstance(net.decoder[-1], nn.Linear)
    assert sum(isinstance(m, nn.Tanh) for m in net.modules()) == 4


def test_sigmoid_output_is_in_unit_interval() -> None:
    net = DenseAutoencoder(AutoencoderSpec(n_inputs=4, output="sigmoid"))
    out = net(100 * torch.randn(64, 4))
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    x = torch.randn(3, 4)
    torch.testing.assert_close(net(x), torch.sigmoid(net.logits(x)))


def test_dropout_only_acts_in_training_mode() -> None:
    net = DenseAutoencoder(AutoencoderSpec(n_inputs=8, hidden=(64,), latent=4, dropout=0.5))
    x = torch.randn(4, 8)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    assert not torch.equal(net(x), net(x))


def test_spec_round_trips_through_json() -> None:
    spec = AutoencoderSpec(n_inputs=7, hidden=(5,), latent=2, activation="gelu", output="sigmoid", dropout=0.1)
    assert AutoencoderSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_inputs": 0}, "n_inputs"),
        ({"n_inputs": 3, "hidden": (4, 0)}, "hidden"),
        ({"n_inputs": 3, "latent": 0}, "latent"),
        ({"n_inputs": 3, "dropout": 1.0}, "dropout"),
        ({"n_inputs": 3, "dropout": -0.1}, "dropout"),
        ({"n_inputs": 3, "activation": "swish"}, "activation"),
        ({"n_inputs": 3, "output": "softmax"}, "output"),
    ],
)
def test_spec_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AutoencoderSpec(**kwargs)
