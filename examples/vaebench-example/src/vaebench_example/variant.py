"""A VAE whose approximate posterior has one variance for every input (a homoscedastic q).

    p(z) = N(0, I),   p(x | z) = Bernoulli(sigmoid(f(z)))  or  N(f(z), diag s^2),
    q(z | x) = N(mu(x), diag sigma^2),   lambda(x) = [mu(x), log sigma]  ([B, 2d]),

with ``log sigma`` a learned vector of ``d`` numbers shared by all ``x``: the encoder amortizes
only the mean. Everything else (the log-weights, the closed-form KL, sampling) comes from
``variants.base.GaussianLatentVAE``, which reads ``lambda`` from :meth:`variational_params`.
Registered by its entry point ``shared-sigma`` (no decorator needed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from variants.base import Decoder, GaussianLatentVAE, flat
from variants.nets import mlp


class SharedSigmaVAE(GaussianLatentVAE):
    default_objective = "elbo"

    def __init__(self, x_shape: Sequence[int], latent_dim: int = 16, hidden: Sequence[int] = (200, 200),
                 likelihood: str = "bernoulli", activation: str = "tanh") -> None:
        super().__init__(x_shape, latent_dim, likelihood)
        self.encoder = mlp(self.x_dim, hidden, self.latent_dim, activation)  # mu(x)
        self.encoder_log_sigma = nn.Parameter(torch.zeros(self.latent_dim))  # "encoder*": an inference parameter
        self.decoder = Decoder.mirrored(self.latent_dim, hidden, self.x_dim, likelihood, activation)

    def variational_params(self, x: Tensor) -> Tensor:
        mu = self.encoder(flat(x))  # [B, d]
        return torch.cat([mu, self.encoder_log_sigma.expand_as(mu)], dim=-1)  # [B, 2d]
