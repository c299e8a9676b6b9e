"""Two stochastic layers (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders",
section 5 and appendix C).

    generative:  p(z2) = N(0, I),  p(z1 | z2) = N(mu_p(z2), diag sigma_p(z2)^2),  p(x | z1) as in vanilla,
    inference:   q(z1 | x) = N(mu_1(x), diag sigma_1(x)^2),  q(z2 | z1) = N(mu_2(z1), diag sigma_2(z1)^2),
    log w = log p(x | z1) + [log p(z2) + log p(z1 | z2)] - [log q(z1 | x) + log q(z2 | z1)],

with ``z1 ~ q(z1 | x)``, ``z2 ~ q(z2 | z1)``. ``p(z2)`` may be a learned prior instead (the config's
``prior = "mog" | "vamp"``, ``variants.priors``). ``latent_dim`` is ``z1``'s size, ``latent_dim2``
``z2``'s. The ``x``-level networks have the vanilla widths ``hidden``; the ``z1 <-> z2`` networks
have ``hidden2`` (default: half of ``hidden``, the paper's 200 -> 100 ratio).

Shapes: ``x`` ``[B, D]``, ``z1`` ``[k, B, d1]``, ``z2`` ``[k, B, d2]``; terms ``[k, B]``.

``variational_params(x)`` is ``lambda = [mu_1, log sigma_1]`` (``[B, 2 d1]``), the parameters of
``q(z1 | x)`` only: ``q(z2 | z1)`` stays amortized. ``terms(x, k, params=lam)`` uses ``lam`` for
``q(z1 | x)`` and the trained network for ``q(z2 | z1)``, so the gap metric's "local" ELBO is local
in ``q(z1 | x)`` only (the ``q(z2 | z1)`` network keeps its trained weights).

Modes: ``"reparam"``; ``"stop-q"`` (``log q`` evaluated with ``lambda`` and the weights of the
``q(z2 | z1)`` network detached, the path through ``z1`` and ``z2`` kept, via
``torch.func.functional_call``); ``"score"`` (``z1``, ``z2`` drawn without gradient, ``log q``
live). No closed-form KL (``kl=None``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from variants.base import VAE, Decoder, LogWeightTerms, flat
from variants.densities import detached_call, diag_gaussian, draw
from variants.nets import mlp
from variants.registry import register


@register("hierarchical")
class HierarchicalVAE(VAE):
    modes = frozenset({"reparam", "stop-q", "score"})
    q_determined_by_params = False  # q(z2 | z1) / the top-down pass act after lambda: no DReG
    default_objective = "elbo"
    learned_priors = frozenset({"mog", "vamp"})  # over z2 (variants.priors)

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int = 16,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        activation: str = "tanh",
        latent_dim2: int = 8,
        hidden2: Sequence[int] | None = None,
    ) -> None:
        super().__init__(x_shape, likelihood)
        d1, d2 = int(latent_dim), int(latent_dim2)
        self.latent_dim, self.latent_dim2 = d1, d2
        hidden2 = tuple(max(1, int(h) // 2) for h in hidden) if hidden2 is None else tuple(hidden2)
        self.encoder = mlp(self.x_dim, hidden, 2 * d1, activation)  # q(z1 | x)
        self.encoder2 = mlp(d1, hidden2, 2 * d2, activation)  # q(z2 | z1)
        self.decoder_z1 = mlp(d2, tuple(reversed(hidden2)), 2 * d1, activation)  # p(z1 | z2)
        self.decoder = Decoder.mirrored(d1, hidden, self.x_dim, likelihood, activation)  # p(x | z1)

    @property
    def top_latent_dim(self) -> int:
        return self.latent_dim2

    def prior(self) -> Distribution:
        """The top prior ``p(z2) = N(0, I_{d2})``, or the learned one (``variants.priors``)."""
        return self.top_prior(self.latent_dim2)

    def vamp_components(self, u: Tensor) -> Tensor:
        """``q(z2 | z1 = E[z1 | u])`` (``[K, 2 d2]``): the VampPrior's component at a pseudo-input
        ``u``, the inference Gaussian over ``z2`` at the mean of ``q(z1 | u)`` (``q(z2 | u)`` itself
        is an integral over ``z1``)."""
        return self.encoder2(self.variational_params(u)[..., : self.latent_dim])

    def log_q_at(self, x: Tensor, z: Tensor) -> Tensor:
        """``log q(z1 | x) + log q(z2 | z1)`` at given ``z = [z1, z2]`` (``[..., B, d1 + d2]``): ``[..., B]``."""
        z1, z2 = z.split([self.latent_dim, self.latent_dim2], -1)
        return diag_gaussian(self.variational_params(x)).log_prob(z1) + diag_gaussian(self.encoder2(z1)).log_prob(z2)

    def p_z1(self, z2: Tensor) -> Distribution:
        """``p(z1 | z2)``, batch ``z2.shape[:-1]``, event ``[d1]``."""
        return diag_gaussian(self.decoder_z1(z2))

    def variational_params(self, x: Tensor) -> Tensor:
        return self.encoder(flat(x))

    # the whole latent z = [z1, z2] (``[..., d1 + d2]``), for annealed importance sampling
    def sample_prior(self, n: int) -> Tensor:
        z2 = self.prior().sample((n,))
        return torch.cat([self.p_z1(z2).sample(), z2], -1)

    def log_prior(self, z: Tensor) -> Tensor:
        """``log p(z2) + log p(z1 | z2)``."""
        z1, z2 = z.split([self.latent_dim, self.latent_dim2], -1)
        return self.log_top_prior(z2) + self.p_z1(z2).log_prob(z1)

    def decode(self, z: Tensor) -> Distribution:
        """``p(x | z) = p(x | z1)``."""
        return self.decoder(z[..., : self.latent_dim])

    def posterior_sample(
        self, x: Tensor, k: int = 1, *, params: Tensor | None = None, mode: str = "reparam"
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """``([z1 [k, B, d1], z2 [k, B, d2]], log p(z1, z2) [k, B], log q(z1, z2 | x) [k, B])``,
        drawn as :meth:`terms` draws them (the same ``z`` for the same seed)."""
        self.check_mode(mode)
        lam = self.variational_params(x) if params is None else params
        q1 = diag_gaussian(lam)
        z1 = draw(q1, (k,), mode)
        q2 = diag_gaussian(self.encoder2(z1))
        z2 = draw(q2, (), mode)
        if mode == "stop-q":
            q1 = diag_gaussian(lam.detach())
            q2 = diag_gaussian(detached_call(self.encoder2, z1))
        log_pz = self.log_top_prior(z2) + self.p_z1(z2).log_prob(z1)
        return [z1, z2], log_pz, q1.log_prob(z1) + q2.log_prob(z2)

    def terms(self, x, k=1, *, params=None, mode="reparam") -> LogWeightTerms:
        x = flat(x)
        (z1, _), log_pz, log_qz = self.posterior_sample(x, k, params=params, mode=mode)
        return LogWeightTerms(log_px_z=self.decoder.log_prob(z1, x), log_pz=log_pz, log_qz=log_qz)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at one ``z1 ~ q(z1 | x)`` (upper levels drawn too): ``[B, D]``."""
        return self.decoder.mean(self.posterior_sample(x, 1)[0][0][0])

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> Tensor:
        z1 = self.p_z1(self.prior().sample((n,))).sample()
        x = self.decoder.mean(z1) if mean else self.decoder(z1).sample()
        return x.reshape(n, *self.x_shape)
