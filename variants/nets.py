"""Shared network builders, so that every variant compares at the same widths and depth."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def _leaky_relu() -> nn.Module:
    """LeakyReLU with slope 0.3 (Keras' default, the DisARM code's binary VAE)."""
    return nn.LeakyReLU(0.3)


ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus, "leaky_relu": _leaky_relu}


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "tanh") -> nn.Sequential:
    """``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim``, ``activation`` between layers.

    Burda et al. (2016) use two tanh layers of 200 units for one stochastic layer; the suites set
    ``hidden`` to fit the data. The output layer is linear.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, int(h)), ACTIVATIONS[activation]()]
        d = int(h)
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)
