"""The densities and draws the variants share: Bernoulli and Gaussian log-densities computed
directly (no ``torch.distributions`` objects or argument checks on the training step's hot path),
the closed-form Gaussian KL, reparameterized draws, and the small sampling helpers of the modes.

Shapes: ``B`` examples, ``k`` samples per example, ``d`` latent dimensions; every function
broadcasts as its docstring says. Each direct formula gives the number ``torch.distributions``
gives (tested in ``tests/test_train_step.py``):

* ``log Bernoulli(x; sigmoid(l)) = x l - softplus(l)`` (:func:`bernoulli_logits_log_prob`),
* ``log N(x; mu, sigma^2) = -(x - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)``
  (:func:`normal_log_prob`, :func:`diag_gaussian_log_prob`, :func:`standard_normal_log_prob`),
* ``KL(N(mu, diag sigma^2) || N(0, I)) = 1/2 sum_i (sigma_i^2 + mu_i^2 - 1 - 2 log sigma_i)``
  (Kingma & Welling 2014, appendix B; :func:`kl_to_standard_normal`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal
from torch.func import functional_call


class BernoulliLogits(torch.distributions.Bernoulli):
    """Bernoulli parametrized by logits whose ``log_prob`` accepts intensities in [0, 1].

    ``log_prob(x) = x * logits - softplus(logits)`` (the negative binary cross-entropy). It is a
    normalized log-probability for binary ``x``; for grey levels it is the usual cross-entropy
    surrogate, so the data loader binarizes by default and records the protocol.
    """

    def __init__(self, logits: Tensor) -> None:
        super().__init__(logits=logits, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return bernoulli_logits_log_prob(self.logits, value)


def bernoulli_logits_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """``x * logits - softplus(logits)`` elementwise (``log Bernoulli(x; sigmoid(logits))`` for binary
    ``x``, the negative binary cross-entropy for intensities in [0, 1]); broadcast."""
    return x * logits - nn.functional.softplus(logits)


LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """``log N(x; loc, exp(log_scale)^2)`` elementwise (broadcast), as ``torch.distributions.Normal``
    computes it: ``-(x - loc)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)``."""
    return -((x - loc) ** 2) / (2 * (2 * log_scale).exp()) - log_scale - LOG_SQRT_2PI


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over the last axis: ``[..., d] -> [...]``."""
    return (-0.5 * z**2 - LOG_SQRT_2PI).sum(-1)


def diag_gaussian_log_prob(z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """``log N(z; mu, diag sigma^2)`` summed over the last axis (``mu``, ``log_sigma`` broadcast against ``z``)."""
    return normal_log_prob(z, mu, log_sigma).sum(-1)


def kl_to_standard_normal(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """``KL(N(mu, diag sigma^2) || N(0, I)) = 1/2 sum_i (sigma_i^2 + mu_i^2 - 1 - 2 log sigma_i)``: ``[..., d] -> [...]``."""
    return 0.5 * ((2 * log_sigma).exp() + mu**2 - 1 - 2 * log_sigma).sum(-1)


def diag_gaussian_rsample(mu: Tensor, log_sigma: Tensor, k: int) -> Tensor:
    """``k`` reparameterized draws ``mu + sigma * eps``, ``eps ~ N(0, I)``: ``[B, d] -> [k, B, d]``.
    The same numbers, from the same generator calls, as ``diag_gaussian(lam).rsample((k,))``."""
    eps = torch.empty((k, *mu.shape), dtype=mu.dtype, device=mu.device).normal_()
    return mu + eps * log_sigma.exp()


def one_hot(index: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``F.one_hot(index, n).to(dtype)`` without its range check, which reads the indices' min and
    max back to the host (a device sync on every call): ``[...] -> [..., n]``. ``index`` must
    hold values in ``[0, n)`` (an ``argmax`` over ``n`` entries does)."""
    out = torch.zeros((*index.shape, n), dtype=dtype, device=index.device)
    return out.scatter_(-1, index.unsqueeze(-1), 1)


def detached_call(module: nn.Module, *args: Tensor) -> Tensor:
    """``module(*args)`` with the module's parameters detached (gradients flow only via ``args``):
    how the multi-level variants evaluate ``log q`` at stopped parameters (mode ``"stop-q"``)."""
    params = {n: p.detach() for n, p in module.named_parameters()}
    return functional_call(module, params, args)


def draw(q: Distribution, k: tuple[int, ...], mode: str) -> Tensor:
    """``q.rsample(k)``, detached in the score-function mode.

    Detaching the reparameterized draw (rather than ``q.sample``) consumes the random stream
    identically in every mode, so one seed gives the same ``z`` for all modes."""
    z = q.rsample(k)
    return z.detach() if mode == "score" else z


def diag_gaussian(params: Tensor) -> Independent:
    """``params = [mu, log_sigma]`` (``[..., 2d]``) -> ``N(mu, diag(sigma^2))`` with event ``[d]``."""
    mu, log_sigma = params.chunk(2, dim=-1)
    return Independent(Normal(mu, log_sigma.exp(), validate_args=False), 1, validate_args=False)
