"""The pathwise bounds: the ELBO and the IWAE bound.

Shapes: ``x`` is ``[B, D]``, ``model.terms(x, k)`` returns ``[k, B]`` tensors.
"""

from __future__ import annotations

import math

import torch

from bench.objectives.registry import Estimate, register


@register("elbo", modes=("reparam",))
def elbo(model, x, k: int = 1, params=None) -> Estimate:
    """ELBO, reparameterized (Kingma & Welling 2014); closed-form KL where the variant has one.

    L(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)), estimated with k samples:
    (1/k) sum_j log p(x | z_j) - KL when the KL is analytic, else (1/k) sum_j log w_j.
    """
    t = model.terms(x, k, params=params, mode="reparam")
    bound = t.log_px_z.mean(0) - t.kl if t.kl is not None else t.log_w.mean(0)
    return Estimate(value=bound.detach(), surrogate=-bound.mean())


def logmeanexp(a: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


@register("iwae", modes=("reparam",))
def iwae(model, x, k: int = 5, params=None) -> Estimate:
    """IWAE bound, reparameterized (Burda et al. 2016): L_k = log (1/k) sum_j w_j.

    Gradient: sum_j softmax(log w)_j grad log w_j (self-normalized importance weights).
    """
    bound = logmeanexp(model.terms(x, k, params=params, mode="reparam").log_w, 0)
    return Estimate(value=bound.detach(), surrogate=-bound.mean())
