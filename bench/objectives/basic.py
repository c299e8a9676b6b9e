"""The pathwise bounds: the ELBO and the IWAE bound, and the KL warm-up helper every ELBO-type
objective uses.

Shapes: ``x`` is ``[B, D]``, ``model.terms(x, k)`` returns ``[k, B]`` tensors.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from bench.objectives.registry import Estimate, register
from variants.base import Lazy, LogWeightTerms


def anneal(t: LogWeightTerms, kl_weight: float) -> LogWeightTerms:
    """The terms of the warm-up objective ``E_q[log p(x | z)] - beta KL`` (``beta = kl_weight``):
    ``log p(z)``, ``log q(z | x)`` and the closed-form ``kl`` multiplied by ``beta``, so that
    ``log w_beta = log p(x | z) + beta (log p(z) - log q(z | x))``. For pathwise surrogates only:
    a score-function estimator must keep ``grad log q`` itself unscaled (it is the score, not a
    term of the objective), see ``bench.objectives.continuous.score_function_estimate``. The
    identity at ``beta = 1``. ``kl_weight`` may be a 0-dim tensor (a compiled or captured step's
    input)."""
    if not isinstance(kl_weight, torch.Tensor) and kl_weight == 1.0:
        return t
    return dataclasses.replace(  # log p(z) and log q(z | x) stay unread (unevaluated) unless needed
        t,
        log_pz=Lazy(lambda: kl_weight * t.log_pz),
        log_qz=Lazy(lambda: kl_weight * t.log_qz),
        kl=None if t.kl is None else kl_weight * t.kl,
    )


def elbo_of(t: LogWeightTerms) -> torch.Tensor:
    """``(1/k) sum_j log p(x | z_j) - KL`` when the KL is analytic, else ``(1/k) sum_j log w_j``: ``[B]``."""
    return t.log_px_z.mean(0) - t.kl if t.kl is not None else t.log_w.mean(0)


@register("elbo", modes=("reparam",), warmup=True)
def elbo(model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
    """ELBO, reparameterized (Kingma & Welling 2014); closed-form KL where the variant has one.

    L(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)), estimated with k samples:
    (1/k) sum_j log p(x | z_j) - KL when the KL is analytic, else (1/k) sum_j log w_j.
    Warm-up (``kl_weight = beta < 1``): the surrogate is minus the same estimate of
    ``E_q[log p(x | z)] - beta KL``; the value stays L(x).
    """
    t = model.terms(x, k, params=params, mode="reparam")
    bound = elbo_of(t)
    annealed = anneal(t, kl_weight)
    surrogate = bound if annealed is t else elbo_of(annealed)
    return Estimate(value=bound.detach(), surrogate=-surrogate.mean())


def logmeanexp(a: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


@register("iwae", modes=("reparam",))
def iwae(model, x, k: int = 5, params=None) -> Estimate:
    """IWAE bound, reparameterized (Burda et al. 2016): L_k = log (1/k) sum_j w_j.

    Gradient: sum_j softmax(log w)_j grad log w_j (self-normalized importance weights).
    """
    bound = logmeanexp(model.terms(x, k, params=params, mode="reparam").log_w, 0)
    return Estimate(value=bound.detach(), surrogate=-bound.mean())
