"""Gradient estimators for discrete (categorical) latents: Gumbel-softmax, straight-through
Gumbel, REINFORCE and VIMCO.

Shapes: ``x`` is ``[B, D]``, ``model.terms(x, k, mode=...)`` returns ``[k, B]`` tensors plus the
analytic ``kl`` (``[B]``); the relaxed modes also return ``log_px_z_hard = log p(x | H)`` at the
exact one-hot sample ``H`` behind each relaxed sample (``variants.gumbel_softmax.CategoricalTerms``).
The logged value is always a bound of the *discrete* model, never the relaxed surrogate.
"""

from __future__ import annotations

import torch

from bench.objectives.basic import logmeanexp
from bench.objectives.continuous import score_function_estimate
from bench.objectives.registry import Estimate, register


def _relaxed_elbo(model, x, k, params, mode) -> Estimate:
    t = model.terms(x, k, params=params, mode=mode)
    surrogate = t.log_px_z.mean(0) - t.kl
    value = t.log_px_z_hard.mean(0) - t.kl.detach()
    return Estimate(value=value, surrogate=-surrogate.mean())


@register("gumbel-softmax", modes=("relaxed",), latents=("discrete",))
def gumbel_softmax(model, x, k: int = 1, params=None) -> Estimate:
    """Relaxed ELBO gradient (Jang, Gu & Poole 2017); logs the discrete ELBO.

    Surrogate: ``-[(1/k) sum_j log p(x | y_j) - KL(q || p)]`` with ``y_j = softmax((log pi + g_j)
    / tau)`` the relaxed samples and the analytic categorical KL, as in Jang et al. Its gradient is
    *biased* for the discrete ELBO (it is the gradient of a different, relaxed objective; the bias
    vanishes as tau -> 0 while the variance grows). Value: ``(1/k) sum_j log p(x | H_j) - KL`` at
    ``H_j = one_hot(argmax(log pi + g_j))``, exact samples of q: an unbiased ELBO estimate.
    """
    return _relaxed_elbo(model, x, k, params, "relaxed")


@register("st-gumbel", modes=("straight-through",), latents=("discrete",))
def st_gumbel(model, x, k: int = 1, params=None) -> Estimate:
    """Straight-through Gumbel-softmax (Jang et al. 2017; Bengio et al. 2013); logs the discrete ELBO.

    The decoder sees the one-hot ``H_j`` (forward), the gradient is that of the relaxed ``y_j``
    (backward): ``z = H + y - stop_grad(y)``. Surrogate ``-[(1/k) sum_j log p(x | z_j) - KL]``
    (biased); its value is the discrete ELBO estimate, which is what is logged.
    """
    return _relaxed_elbo(model, x, k, params, "straight-through")


@register("reinforce", modes=("score",), latents=("discrete",))
def reinforce(model, x, k: int = 1, params=None) -> Estimate:
    """Score-function ELBO gradient with a leave-one-out baseline (Williams 1992); unbiased.

    ``ELBO = E_q[log p(x | z)] - KL`` with the analytic categorical KL; phi gets
    ``(log p(x | z_j) - b_j) grad log q(z_j | x) - grad KL``, theta ``grad log p(x | z_j)``
    (``bench.objectives.continuous.score_function_estimate``; baseline over the other ``k - 1``
    samples, or over the other examples of the batch when ``k = 1``). Value: the ELBO estimate.
    """
    return score_function_estimate(model.terms(x, k, params=params, mode="score"))


@register("vimco", modes=("score",), latents=("discrete",))
def vimco(model, x, k: int = 5, params=None) -> Estimate:
    """VIMCO (Mnih & Rezende 2016): the k-sample IWAE bound with leave-one-out learning signals.

    Value: ``L = logmeanexp_j log w_j`` (``z_j`` exact samples of q). Gradient (unbiased for
    ``grad L_k``):

        sum_j (L - L_{-j}) grad log q(z_j | x)  +  sum_j w~_j grad log w_j,
        L_{-j} = log (1/k) [ sum_{i != j} w_i + exp(mean_{i != j} log w_i) ],

    i.e. sample ``j``'s weight replaced by the geometric mean of the others. ``k = 1`` has no
    other sample: the signal is ``L`` itself (REINFORCE on the ELBO without baseline).
    """
    t = model.terms(x, k, params=params, mode="score")
    log_w = t.log_w  # [k, B]; grad: theta via log p, phi via -log q (z detached)
    bound = logmeanexp(log_w, 0)
    lw = log_w.detach()
    if k == 1:
        signal = bound.detach().unsqueeze(0)
    else:
        others_mean = (lw.sum(0, keepdim=True) - lw) / (k - 1)  # [k, B]
        eye = torch.eye(k, dtype=torch.bool, device=lw.device).unsqueeze(-1)  # [k(j), k(i), 1]
        replaced = torch.where(eye, others_mean.unsqueeze(1), lw.unsqueeze(0))  # [j, i, B]
        signal = bound.detach().unsqueeze(0) - logmeanexp(replaced, 1)  # L - L_{-j}, [k, B]
    surrogate = -(bound + (signal * t.log_qz).sum(0))
    return Estimate(value=bound.detach(), surrogate=surrogate.mean())
