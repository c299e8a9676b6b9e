"""Categorical latents with the Gumbel-softmax relaxation (Jang, Gu & Poole 2017, "Categorical
Reparameterization with Gumbel-Softmax"; Maddison, Mnih & Teh 2017, the Concrete distribution).

    z = (z_1, ..., z_n),  z_i one-hot over c classes      (n = n_latent = 20, c = n_classes = 10),
    p(z) = prod_i Uniform(c),                            log p(z) = -n log c,
    q(z | x) = prod_i Categorical(softmax(l_i(x))),      lambda(x) = logits l(x)   ([B, n * c]),
    p(x | z) = Bernoulli / Gaussian decoder of the flattened one-hot code ([.., n * c]).

``latent_dim`` is accepted for a uniform config (the harness passes the suite's value) and is
*ignored*: the latent space is set by ``n_latent`` and ``n_classes`` (set them per suite under
``[variant_options.gumbel-softmax]``).

Sampling (``terms(..., mode=...)``), all from one Gumbel perturbation ``g ~ Gumbel(0, 1)^[k, B, n, c]``
of the log-probabilities ``log pi = log_softmax(l)``:

* hard sample     ``H = one_hot(argmax(log pi + g))``: an exact draw of q (the Gumbel-max trick);
* relaxed sample  ``y = softmax((log pi + g) / tau)``: a point of the simplex, differentiable in ``l``;
* ``"score"``             ``z = H`` (no gradient through z; ``log q(H)`` carries the score). This is
                          ``eval_mode``: ``log_weights`` is the log-weight of the *discrete* model,
                          comparable with the continuous variants' bounds.
* ``"relaxed"``           ``z = y`` in the decoder (Jang et al.'s training signal);
* ``"straight-through"``  ``z = H + y - stop_grad(y)``: the value is ``H``, the gradient that of ``y``.

In every mode ``log_pz`` and ``log_qz`` are the categorical log-probabilities of the hard sample
``H`` and ``kl = KL(q || p) = sum_i sum_c pi_ic log pi_ic + n log c`` (analytic, ``[B]``), so
``log_px_z(relaxed) - kl`` is the relaxed surrogate of Jang et al. and never a bound.
:class:`CategoricalTerms` adds ``log_px_z_hard = log p(x | H)`` (detached, ``[k, B]``): with it an
objective logs the discrete ELBO at the hard argmax of the same perturbation (an exact sample).

In ``"relaxed"`` mode it also holds the relaxed densities of Maddison, Mnih & Teh (2017) at the
log-space sample ``s_i = log_softmax((log pi_i + g_i) / tau)`` (``y = exp s``; the KL is the same
in either space, and log space is the stable one): ``log_qz_relaxed = sum_i log ExpConcrete(s_i;
pi_i, tau)`` and ``log_pz_relaxed = sum_i log ExpConcrete(s_i; uniform, lambda)``, ``lambda =
prior_tau`` (``0``: the posterior's ``tau``), with

    log ExpConcrete(s; alpha, tau) = log (c-1)! + (c-1) log tau + sum_c (log alpha_c - tau s_c)
                                     - c logsumexp_c (log alpha_c - tau s_c).

Temperature: ``tau = max(tau_min, tau0 * exp(-anneal_rate * t))``, recomputed every
``anneal_every`` optimizer steps in :meth:`on_train_step` (Jang et al.: r ~ 1e-5..1e-4, update
every 500-1000 steps, tau_min = 0.5; :class:`AnnealedTemperature`, shared with the binary
variant). ``tau`` is a buffer, so it is saved with the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, OneHotCategorical
from torch.nn import functional as F

from variants.base import VAE, Decoder, LogWeightTerms, flat
from variants.densities import one_hot
from variants.nets import mlp
from variants.registry import VariantConfigError, register


@dataclass
class CategoricalTerms(LogWeightTerms):
    """:class:`LogWeightTerms` plus ``log_px_z_hard``: ``log p(x | H)`` at the exact one-hot
    sample ``H`` behind every relaxed / straight-through sample (``[k, B]``, detached)."""

    log_px_z_hard: Tensor | None = None
    log_qz_relaxed: Tensor | None = None  # [k, B], "relaxed" mode: log q_tau(s | x) of the relaxed sample
    log_pz_relaxed: Tensor | None = None  # [k, B], "relaxed" mode: log p_lambda(s), the relaxed prior


class AnnealedTemperature:
    """The relaxation temperature of a discrete variant and its schedule (Jang et al. 2017):
    ``tau = max(tau_min, tau0 * exp(-anneal_rate * t))``, recomputed every ``anneal_every``
    optimizer steps in :meth:`on_train_step`. ``tau`` is a buffer, saved with the weights.
    Only the relaxed and straight-through samples read it (the ``score`` sample is the exact
    ``argmax``), and only the relaxed prior reads ``prior_tau``: ``mode_options``."""

    mode_options: ClassVar[dict[str, frozenset[str]]] = {
        **dict.fromkeys(("tau0", "tau_min", "anneal_rate", "anneal_every"), frozenset({"relaxed", "straight-through"})),
        "prior_tau": frozenset({"relaxed"}),
    }

    def init_temperature(self, tau0: float, tau_min: float, anneal_rate: float, anneal_every: int) -> None:
        if not (0 < tau_min <= tau0) or anneal_rate < 0 or anneal_every < 1:
            raise VariantConfigError(
                f"{self.name} needs 0 < tau_min <= tau0, anneal_rate >= 0 and anneal_every >= 1"
            )
        self.tau0, self.tau_min = float(tau0), float(tau_min)
        self.anneal_rate, self.anneal_every = float(anneal_rate), int(anneal_every)
        self.register_buffer("tau", torch.tensor(self.tau0))

    def temperature(self, step: int) -> float:
        """``max(tau_min, tau0 exp(-r t))`` at ``t`` = the last multiple of ``anneal_every`` <= step."""
        t = step - step % self.anneal_every
        return max(self.tau_min, self.tau0 * math.exp(-self.anneal_rate * t))

    def on_train_step(self, step: int) -> None:
        if step % self.anneal_every == 0:
            self.tau.fill_(self.temperature(step))


def exp_concrete_log_prob(s: Tensor, log_alpha: Tensor, tau: float | Tensor) -> Tensor:
    """``log ExpConcrete(s; alpha, tau)`` over the last axis (Maddison et al. 2017, appendix),
    for ``s`` with ``logsumexp(s) = 0``; ``log_alpha`` unnormalized logits, broadcast."""
    c = s.shape[-1]
    tau = torch.as_tensor(tau, dtype=s.dtype, device=s.device)
    a = log_alpha - tau * s
    return math.lgamma(c) + (c - 1) * tau.log() + a.sum(-1) - c * torch.logsumexp(a, -1)


def gumbel_noise(shape: Sequence[int], like: Tensor) -> Tensor:
    """Standard Gumbel draws ``-log E``, ``E ~ Exp(1)``, on ``like``'s device and dtype."""
    return -torch.empty(tuple(shape), device=like.device, dtype=like.dtype).exponential_().log()


def gumbel_softmax_sample(
    logits: Tensor, tau: float | Tensor, k: int | None = None, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """One Gumbel perturbation of ``logits`` (``[..., c]``) and the three samples built from it.

    Returns ``(hard, relaxed, straight_through)``, each ``[k, ..., c]`` (``[..., c]`` if ``k`` is
    None): ``hard = one_hot(argmax(logits + g))`` is an exact categorical draw with probabilities
    ``softmax(logits)``; ``relaxed = softmax((log_softmax(logits) + g) / tau)`` lies on the simplex
    and tends to ``hard`` as ``tau -> 0``; ``straight_through`` has the value of ``hard`` and the
    gradient of ``relaxed``. ``noise`` (same shape as the output) fixes ``g``.
    """
    log_p = torch.log_softmax(logits, -1)
    shape = log_p.shape if k is None else (k, *log_p.shape)
    g = gumbel_noise(shape, log_p) if noise is None else noise
    perturbed = log_p + g
    relaxed = torch.softmax(perturbed / tau, -1)
    hard = one_hot(perturbed.detach().argmax(-1), log_p.shape[-1], log_p.dtype)
    return hard, relaxed, hard + relaxed - relaxed.detach()


@register("gumbel-softmax")
class GumbelSoftmaxVAE(AnnealedTemperature, VAE):
    latent = "discrete"
    modes = frozenset({"score", "relaxed", "straight-through"})
    eval_mode = "score"
    default_objective = "gumbel-softmax"
    default_k = 1
    local_objective = "reinforce"  # free logits: unbiased score-function gradient of the ELBO

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int | None = None,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        activation: str = "tanh",
        n_latent: int = 20,
        n_classes: int = 10,
        tau0: float = 1.0,
        tau_min: float = 0.5,
        anneal_rate: float = 3e-5,
        anneal_every: int = 1000,
        prior_tau: float = 0.0,
    ) -> None:
        """``latent_dim`` is ignored (see the module docstring); the code is ``n_latent`` one-hot
        vectors of ``n_classes``; the temperature schedule is ``max(tau_min, tau0 exp(-r t))``;
        ``prior_tau`` the relaxed prior's temperature (``0``: ``tau``), used by ``concrete``."""
        super().__init__(x_shape, likelihood)
        if n_latent < 1 or n_classes < 2 or prior_tau < 0:
            raise VariantConfigError(
                f"gumbel-softmax needs n_latent >= 1, n_classes >= 2 and prior_tau >= 0, "
                f"got {n_latent}, {n_classes}, {prior_tau}"
            )
        self.n_latent, self.n_classes = int(n_latent), int(n_classes)
        self.code_dim = self.n_latent * self.n_classes
        self.prior_tau = float(prior_tau)
        self.init_temperature(tau0, tau_min, anneal_rate, anneal_every)
        self.encoder = mlp(self.x_dim, hidden, self.code_dim, activation)
        self.decoder = Decoder.mirrored(self.code_dim, hidden, self.x_dim, likelihood, activation)

    # -- the contract ----------------------------------------------------------------------------
    def variational_params(self, x: Tensor) -> Tensor:
        return self.encoder(flat(x))

    def log_probs(self, params: Tensor) -> Tensor:
        """``log pi``: ``[B, n * c]`` logits -> ``[B, n, c]`` normalized log-probabilities."""
        return torch.log_softmax(params.unflatten(-1, (self.n_latent, self.n_classes)), -1)

    def prior(self) -> Distribution:
        """``p(z)``: ``n_latent`` independent uniform one-hot vectors, event shape ``[n, c]``."""
        probs = self.tau.new_full((self.n_latent, self.n_classes), 1.0 / self.n_classes)
        return Independent(OneHotCategorical(probs=probs), 1)

    def encode(self, x: Tensor) -> Distribution:
        """``q(z | x)`` over one-hot codes ``[B, n, c]`` (``sample`` and ``log_prob``; no ``rsample``:
        a discrete family is not reparameterizable, its relaxation is ``terms(mode="relaxed")``)."""
        return Independent(OneHotCategorical(logits=self.log_probs(self.variational_params(x))), 1)

    def decode(self, z: Tensor) -> Distribution:
        """``p(x | z)`` for one-hot (or relaxed) codes ``[..., n, c]`` or flattened ``[..., n * c]``."""
        if z.shape[-2:] == (self.n_latent, self.n_classes):
            z = z.flatten(-2)
        return self.decoder(z)

    def sample_prior(self, n: int) -> Tensor:
        """``n`` codes from the uniform prior, flattened one-hot ``[n, n * c]`` (the sleep phase of
        ``bench.objectives.wake_sleep`` dreams from them; ``decode`` reads them)."""
        idx = torch.randint(self.n_classes, (n, self.n_latent), device=self.tau.device)
        return one_hot(idx, self.n_classes, self.tau.dtype).flatten(-2)

    def log_q_at(self, x: Tensor, z: Tensor) -> Tensor:
        """``log q(z | x) = sum_i <z_i, log pi_i(x)>`` at given one-hot codes ``z [..., B, n * c]``: ``[..., B]``."""
        log_p = self.log_probs(self.variational_params(flat(x)))  # [B, n, c]
        return (z.unflatten(-1, (self.n_latent, self.n_classes)) * log_p).sum((-1, -2))

    def terms(self, x, k=1, *, params=None, mode="score") -> CategoricalTerms:
        self.check_mode(mode)
        x = flat(x)
        lam = self.variational_params(x) if params is None else params
        log_p = self.log_probs(lam)  # [B, n, c]
        g = gumbel_noise((k, *log_p.shape), log_p)
        hard, relaxed, st = gumbel_softmax_sample(log_p, self.tau, noise=g)  # [k, B, n, c]
        z = {"score": hard, "relaxed": relaxed, "straight-through": st}[mode]
        log_px_z = self.decoder.log_prob(z.flatten(-2), x)
        log_qz_relaxed = log_pz_relaxed = None
        if mode == "relaxed":
            with torch.no_grad():
                log_px_z_hard = self.decoder.log_prob(hard.flatten(-2), x)
            s = torch.log_softmax((log_p + g) / self.tau, -1)  # log of the relaxed sample
            log_qz_relaxed = exp_concrete_log_prob(s, log_p, self.tau).sum(-1)
            log_pz_relaxed = exp_concrete_log_prob(s, torch.zeros_like(s), self.prior_tau or self.tau).sum(-1)
        else:  # the forward value of z is the hard sample itself
            log_px_z_hard = log_px_z.detach()
        n_log_c = self.n_latent * math.log(self.n_classes)
        return CategoricalTerms(
            log_px_z=log_px_z,
            log_pz=log_px_z.new_full(log_px_z.shape, -n_log_c),
            log_qz=(hard * log_p).sum((-1, -2)),
            kl=(log_p.exp() * log_p).sum((-1, -2)) + n_log_c,
            log_px_z_hard=log_px_z_hard,
            log_qz_relaxed=log_qz_relaxed,
            log_pz_relaxed=log_pz_relaxed,
        )

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at one exact sample ``H ~ q(z | x)``: ``[B, D]``."""
        hard, _, _ = gumbel_softmax_sample(self.log_probs(self.variational_params(x)), self.tau)
        return self.decoder.mean(hard.flatten(-2))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> Tensor:
        idx = torch.randint(self.n_classes, (n, self.n_latent), device=self.tau.device)
        z = F.one_hot(idx, self.n_classes).to(self.tau.dtype).flatten(-2)
        x = self.decoder.mean(z) if mean else self.decoder(z).sample()
        return x.reshape(n, *self.x_shape)
