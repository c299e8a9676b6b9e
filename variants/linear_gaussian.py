"""The oracle: probabilistic PCA (Tipping & Bishop 1999) with an amortized diagonal Gaussian q.

    p(z) = N(0, I_d),   p(x | z) = N(W z + b, sigma^2 I_D),   so   p(x) = N(b, W W^T + sigma^2 I_D).
    p(z | x) = N(m(x), Lambda^{-1}),  Lambda = I + W^T W / sigma^2,  m(x) = Lambda^{-1} W^T (x - b) / sigma^2.
    q(z | x) = N(A x + c, diag exp(2 s)),  lambda(x) = [A x + c, s]  ([B, 2d]; s is shared over x).

With a learned mixture prior (``prior = "mog"`` or ``"vamp"``, ``variants.priors``: ``p(z) =
sum_k pi_k N(m_k, S_k)``, ``S_k`` diagonal) the marginal stays exact, a mixture of Gaussians:
``p(x) = sum_k pi_k N(W m_k + b, W S_k W^T + sigma^2 I_D)``; the posterior is then a mixture too,
and the posterior methods below (written for ``N(0, I)``) refuse.

Every quantity the benchmark estimates has a closed form here: ``exact_log_marginal(x)`` is
``log p(x)`` and ``exact_posterior(x)`` is ``p(z | x)``; the best diagonal Gaussian has the exact
posterior mean and variances ``1 / diag(Lambda)``. The encoder is linear, as the exact posterior
mean is, so a trained encoder can close the amortization gap. Continuous data only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, MultivariateNormal, Normal

from variants.base import GaussianLatentVAE, flat
from variants.densities import normal_log_prob
from variants.registry import VariantConfigError, register


class _LinearGaussianDecoder(nn.Module):
    """``p(x | z) = N(W z + b, sigma^2 I)``; ``log_sigma`` is a learned scalar."""

    def __init__(self, latent_dim: int, x_dim: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(x_dim, latent_dim) / latent_dim**0.5)
        self.b = nn.Parameter(torch.zeros(x_dim))
        self.log_sigma = nn.Parameter(torch.zeros(()))

    def mean(self, z: Tensor) -> Tensor:
        return z @ self.W.T + self.b

    def forward(self, z: Tensor) -> Independent:
        loc = self.mean(z)
        return Independent(Normal(loc, self.log_sigma.exp().expand_as(loc), validate_args=False), 1, validate_args=False)

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """``log p(x | z)`` summed over the dimensions, as ``self(z).log_prob(x)``, computed directly."""
        return normal_log_prob(x, self.mean(z), self.log_sigma).sum(-1)


class _LinearEncoder(nn.Module):
    def __init__(self, x_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.mean = nn.Linear(x_dim, latent_dim)
        self.log_sigma = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        mu = self.mean(x)
        return torch.cat([mu, self.log_sigma.expand_as(mu)], dim=-1)


@register("linear-gaussian")
class LinearGaussian(GaussianLatentVAE):
    default_objective = "elbo"

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 4,
        hidden: Sequence[int] = (),
        likelihood: str = "gaussian",
        activation: str = "tanh",
    ) -> None:
        """``hidden`` and ``activation`` are accepted for a uniform config and unused (linear maps)."""
        if likelihood != "gaussian":
            raise VariantConfigError(
                "variant 'linear-gaussian' is the pPCA oracle and needs continuous data "
                "(likelihood 'gaussian', binarization 'none'); use the 'linear-gaussian' dataset"
            )
        super().__init__(x_shape, latent_dim, likelihood)
        self.encoder = _LinearEncoder(self.x_dim, self.latent_dim)
        self.decoder = _LinearGaussianDecoder(self.latent_dim, self.x_dim)

    def marginal(self) -> Distribution:
        """``p(x) = N(b, W W^T + sigma^2 I)``; with a learned mixture prior the mixture
        ``sum_k pi_k N(W m_k + b, W S_k W^T + sigma^2 I)`` (batch ``[]``, event ``[D]``)."""
        W, b = self.decoder.W, self.decoder.b
        noise = torch.exp(2 * self.decoder.log_sigma) * torch.eye(self.x_dim, device=W.device)
        if self.latent_prior is None:
            return MultivariateNormal(b, covariance_matrix=W @ W.T + noise)
        log_pi, m, log_s = self.latent_prior.mixture(self)  # [K], [K, d], [K, d]
        cov = (W * (2 * log_s).exp()[:, None, :]) @ W.T + noise  # [K, D, D]
        comps = MultivariateNormal(m @ W.T + b, covariance_matrix=cov)
        return MixtureSameFamily(Categorical(logits=log_pi), comps)

    def exact_log_marginal(self, x: Tensor) -> Tensor:
        """``log p(x)``, ``[B]``."""
        return self.marginal().log_prob(flat(x))

    def _standard_prior_only(self, what: str) -> None:
        if self.latent_prior is not None:
            raise NotImplementedError(
                f"linear-gaussian: {what} is written for p(z) = N(0, I); with prior = "
                f"{self.latent_prior.kind!r} the posterior is a mixture of Gaussians")

    def posterior_precision(self) -> Tensor:
        """``Lambda = I + W^T W / sigma^2``, ``[d, d]`` (the same for every x)."""
        self._standard_prior_only("the exact posterior")
        W = self.decoder.W
        eye = torch.eye(self.latent_dim, device=W.device)
        return eye + W.T @ W / torch.exp(2 * self.decoder.log_sigma)

    def exact_posterior(self, x: Tensor) -> MultivariateNormal:
        """``p(z | x) = N(Lambda^{-1} W^T (x - b) / sigma^2, Lambda^{-1})``, batch ``[B]``, event ``[d]``."""
        W, b = self.decoder.W, self.decoder.b
        cov = torch.linalg.inv(self.posterior_precision())
        mean = (flat(x) - b) @ W @ cov.T / torch.exp(2 * self.decoder.log_sigma)
        return MultivariateNormal(mean, covariance_matrix=cov.expand(mean.shape[0], -1, -1))

    def optimal_diagonal_params(self, x: Tensor) -> Tensor:
        """``lambda*`` of the best diagonal Gaussian (argmin KL(q || p(z|x))): the exact posterior
        mean and variances ``1 / diag(Lambda)``; ``[B, 2d]`` in the encoder's parametrization."""
        post = self.exact_posterior(x)
        log_sigma = -0.5 * torch.log(torch.diagonal(self.posterior_precision()))
        return torch.cat([post.mean, log_sigma.expand_as(post.mean)], dim=-1)
