"""The Renyi variational bound at alpha = 1/2 (Li & Turner 2016, "Renyi Divergence Variational
Inference"), reparameterized.

    L_alpha(x) = 1 / (1 - alpha) log E_q[ w^(1 - alpha) ],   w = p(x, z) / q(z | x),

estimated with k samples as ``1 / (1 - alpha) logmeanexp_j ((1 - alpha) log w_j)``. For
``0 <= alpha <= 1`` it lies between the ELBO (alpha -> 1) and log p(x) (alpha = 0), and the
k-sample estimate is biased low, so the value logged is a lower bound of log p(x); at alpha = 1/2
it is ``2 logmeanexp_j (log w_j / 2)``. Shapes: ``x [B, D]``, ``model.terms(x, k)`` gives ``[k, B]``.
"""

from __future__ import annotations

import math

import torch

from bench.objectives import Estimate, register

ALPHA = 0.5


@register("vr-half", modes=("reparam",))
def vr_half(model, x, k: int = 1, params=None) -> Estimate:
    """Renyi (VR) bound at alpha = 1/2 (Li & Turner 2016), reparameterized; between the ELBO and log p(x)."""
    log_w = model.terms(x, k, params=params, mode="reparam").log_w  # [k, B]
    a = 1.0 - ALPHA
    bound = (torch.logsumexp(a * log_w, 0) - math.log(k)) / a  # [B]
    return Estimate(value=bound.detach(), surrogate=-bound.mean())
