"""The vanilla VAE (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

    p(z) = N(0, I),  p(x | z) = Bernoulli(sigmoid(f(z)))  or  N(f(z), diag s^2),
    q(z | x) = N(mu(x), diag sigma(x)^2),   lambda(x) = [mu(x), log sigma(x)]  ([B, 2d]).

Encoder and decoder are MLPs of the same widths (``variants.nets.mlp``). Trained by default with
the ELBO using the closed-form Gaussian KL.
"""

from __future__ import annotations

from collections.abc import Sequence

from variants.base import Decoder, GaussianLatentVAE
from variants.nets import mlp
from variants.registry import register


@register("vanilla")
class VanillaVAE(GaussianLatentVAE):
    default_objective = "elbo"

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 16,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        activation: str = "tanh",
    ) -> None:
        super().__init__(x_shape, latent_dim, likelihood)
        self.encoder = mlp(self.x_dim, hidden, 2 * self.latent_dim, activation)
        self.decoder = Decoder.mirrored(self.latent_dim, hidden, self.x_dim, likelihood, activation)
