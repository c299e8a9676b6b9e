"""Gradient estimators for continuous (reparameterizable) latents: DReG, STL, score function.

Shapes: ``x`` is ``[B, D]`` (or ``[B, *x_shape]``), ``model.terms(x, k)`` returns ``[k, B]``
tensors, ``log w_j = log p(x, z_j) - log q(z_j | x)``, ``w~_j = softmax_j(log w)`` (the
self-normalized importance weights). ``phi`` are the inference parameters (through
``lambda = model.variational_params(x)`` or the free ``params``), ``theta`` the generative ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.objectives.basic import anneal, logmeanexp
from bench.objectives.registry import Estimate, register
from variants.base import LogWeightTerms, flat


@register("dreg", modes=("stop-q",), needs=("q_determined_by_params",))
def dreg(model, x, k: int = 5, params=None) -> Estimate:
    """IWAE bound with the doubly reparameterized gradient (Tucker, Lawson, Gu & Maddison 2019).

    Value: ``L_k = logmeanexp_j log w_j``. Gradient (unbiased for grad L_k):

        theta:  sum_j w~_j grad_theta log w_j                         (the usual IWAE gradient)
        phi:    sum_j w~_j^2 (d log w_j / d z_j) (d z_j / d phi)      (score term removed)

    with ``log q`` evaluated at ``stop_grad(lambda)`` (mode ``"stop-q"``), so ``log w_j`` depends on
    ``phi`` only through ``z_j``. The different weights per path are implemented by drawing the
    ``k`` samples as ``k`` copies of the batch (``[k * B]``, one sample each) from a copy
    ``lambda_k`` of ``lambda`` and scaling the gradient that reaches ``lambda_k`` by ``w~_j``
    (a tensor hook): the surrogate ``-sum_j w~_j log w_j`` then gives ``w~_j`` to ``theta`` and
    ``w~_j^2`` to ``phi``. This is exact when ``lambda`` determines ``q`` (single-latent variants);
    inference parameters that bypass ``lambda`` would receive the ``w~_j`` weights instead.
    With ``k = 1`` it is STL's gradient.
    """
    x = flat(x)
    b = x.shape[0]
    lam = model.variational_params(x) if params is None else params
    lam_k = lam.unsqueeze(0).expand(k, *lam.shape).reshape(k * b, *lam.shape[1:])
    x_k = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, -1)
    log_w = model.terms(x_k, 1, params=lam_k, mode="stop-q").log_w.reshape(k, b)
    w = torch.softmax(log_w.detach(), 0)  # [k, B]
    if lam_k.requires_grad:
        scale = w.reshape(k * b, *([1] * (lam.dim() - 1)))
        lam_k.register_hook(lambda g: g * scale)
    return Estimate(value=logmeanexp(log_w.detach(), 0), surrogate=-(w * log_w).sum(0).mean())


@register("stl", modes=("stop-q",), warmup=True)
def stl(model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
    """ELBO with the sticking-the-landing gradient (Roeder, Wu & Duvenaud 2017).

    Value: the ELBO estimate ``(1/k) sum_j log w_j``. Gradient: that of the same expression with
    ``log q(z_j | stop_grad(lambda))`` (mode ``"stop-q"``), i.e. the reparameterized ELBO gradient
    without the score term ``-grad_phi log q(z | x)|_z``, whose expectation is zero: unbiased for
    the ELBO gradient, and zero-variance when q equals the posterior. ``k > 1`` averages ``k``
    such single-sample estimates (the ELBO, not the IWAE bound: for the IWAE bound use ``dreg``,
    since dropping the score term of L_k biases its gradient). Warm-up: the same with
    ``log w_beta = log p(x | z) + beta (log p(z) - log q(z | x))`` (its score term has mean 0 too).
    """
    t = model.terms(x, k, params=params, mode="stop-q")
    return Estimate(value=t.log_w.mean(0).detach(), surrogate=-anneal(t, kl_weight).log_w.mean(0).mean())


def loo_baseline(f: Tensor) -> Tensor:
    """A baseline for the learning signals ``f`` (``[k, B]``) that is independent of each sample.

    ``k >= 2``: leave-one-out over the samples of the same example,
    ``b_j = (sum_i f_i - f_j) / (k - 1)`` (per example; Kool, van Hoof & Welling 2019).
    ``k = 1``: leave-one-out over the batch, ``b_n = (sum_m f_m - f_n) / (B - 1)`` (an average of
    the other examples' signals, a zero-lag moving average); ``0`` when ``B = 1``.
    Either way ``b`` uses only other, independent samples, so ``E[(f - b) grad log q] = E[f grad
    log q]``: the estimator stays unbiased. Returned detached.
    """
    f = f.detach()
    k, b = f.shape
    if k >= 2:
        return (f.sum(0, keepdim=True) - f) / (k - 1)
    if b >= 2:
        return (f.sum(1, keepdim=True) - f) / (b - 1)
    return torch.zeros_like(f)


def learning_signal(t: LogWeightTerms, kl_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(f, model_term)`` of a score-function estimator of ``E_q[f]`` from ``terms(mode="score")``
    (``[k, B]`` each), without a closed-form KL: ``f = log p(x | z) + beta (log p(z) - log q(z | x))``
    (``log w`` at ``beta = 1``; ``beta < 1`` is the KL warm-up), and the part whose pathwise gradient
    the generative parameters get, ``log p(x | z) + beta log p(z)`` (the ``-beta grad log q`` term of
    ``grad f`` is dropped: its expectation is 0)."""
    return t.log_px_z + kl_weight * (t.log_pz - t.log_qz), t.log_px_z + kl_weight * t.log_pz


def score_function_estimate(t: LogWeightTerms, kl_weight: float = 1.0) -> Estimate:
    """REINFORCE for the ELBO from ``terms(..., mode="score")`` (``z`` detached).

    With an analytic ``kl`` (categorical latents): ``ELBO = E_q[log p(x | z)] - KL``, learning
    signal ``f = log p(x | z)``; otherwise ``ELBO = E_q[log w]``, ``f = log w``
    (:func:`learning_signal`). Surrogate (to minimize), averaged over ``j`` and the batch:

        -[ (f_j - b_j) log q(z_j | x)  +  log p(x | z_j) + log p(z_j) ]  (+ KL when analytic)

    so phi gets ``(f - b) grad log q`` (the score-function estimator, ``b`` from
    :func:`loo_baseline`; with ``f = log w`` the ``-grad log q`` term of ``grad log w`` is dropped,
    its expectation being 0) and theta gets its usual gradient ``grad_theta log p(x, z)``.
    Warm-up (``kl_weight = beta``): ``beta KL``, resp. ``f`` and the model term of
    :func:`learning_signal`; the score ``grad log q`` itself is never scaled.
    """
    if t.kl is not None:
        f = t.log_px_z
        bound = f.mean(0) - t.kl
        model_term = t.log_px_z
    else:
        bound = t.log_w.mean(0)
        f, model_term = learning_signal(t, kl_weight)
    signal = f.detach() - loo_baseline(f)
    surrogate = -(signal * t.log_qz + model_term).mean(0)
    if t.kl is not None:
        surrogate = surrogate + kl_weight * t.kl
    return Estimate(value=bound.detach(), surrogate=surrogate.mean())


@register("score-function", modes=("score",), warmup=True)
def score_function(model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
    """ELBO with the score-function (REINFORCE) encoder gradient and a leave-one-out baseline.

    Value: the ELBO estimate ``(1/k) sum_j log w_j``. The estimator the reparameterization trick
    replaced (Williams 1992; Paisley et al. 2012; Ranganath et al. 2014), kept as the variance
    reference point; see :func:`score_function_estimate` and :func:`loo_baseline` (over the ``k``
    samples of an example if ``k >= 2``, else over the other examples of the batch).
    """
    return score_function_estimate(model.terms(x, k, params=params, mode="score"), kl_weight)
