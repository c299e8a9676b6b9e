"""Gradient estimators for discrete latents (categorical and binary): Gumbel-softmax with the
categorical or the relaxed (Concrete) KL, straight-through Gumbel, REINFORCE, RLOO, NVIL and VIMCO.

Shapes: ``x`` is ``[B, D]``, ``model.terms(x, k, mode=...)`` returns ``[k, B]`` tensors plus the
analytic ``kl`` (``[B]``); the relaxed modes also return ``log_px_z_hard = log p(x | H)`` at the
exact sample ``H`` behind each relaxed sample, and ``"relaxed"`` the relaxed densities
``log_qz_relaxed``, ``log_pz_relaxed`` (``variants.gumbel_softmax.CategoricalTerms``).
The logged value is always a bound of the *discrete* model, never the relaxed surrogate.

Two learning signals appear. ``reinforce`` keeps the project's convention for discrete latents:
``f = log p(x | z)`` with the closed-form KL differentiated exactly. ``rloo`` and ``nvil`` (and
the binary estimators of ``bench.objectives.binary``) use the single-sample ELBO
``f = log w = log p(x, z) - log q(z | x)``, as their papers do, so that their variances compare
with the published ones.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from bench.objectives.basic import logmeanexp
from bench.objectives.continuous import learning_signal, score_function_estimate
from bench.objectives.registry import Estimate, TrainableObjective, register
from variants.base import flat


def _relaxed_elbo(model, x, k, params, mode, kl_weight) -> Estimate:
    t = model.terms(x, k, params=params, mode=mode)
    surrogate = t.log_px_z.mean(0) - kl_weight * t.kl
    value = t.log_px_z_hard.mean(0) - t.kl.detach()
    return Estimate(value=value, surrogate=-surrogate.mean())


@register("gumbel-softmax", modes=("relaxed",), latents=("discrete",), warmup=True)
def gumbel_softmax(model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
    """Relaxed ELBO gradient (Jang, Gu & Poole 2017); logs the discrete ELBO.

    Surrogate: ``-[(1/k) sum_j log p(x | y_j) - KL(q || p)]`` with ``y_j = softmax((log pi + g_j)
    / tau)`` the relaxed samples and the analytic categorical KL, as in Jang et al. Its gradient is
    *biased* for the discrete ELBO (it is the gradient of a different, relaxed objective; the bias
    vanishes as tau -> 0 while the variance grows). Value: ``(1/k) sum_j log p(x | H_j) - KL`` at
    ``H_j = one_hot(argmax(log pi + g_j))``, exact samples of q: an unbiased ELBO estimate.
    """
    return _relaxed_elbo(model, x, k, params, "relaxed", kl_weight)


@register("concrete", modes=("relaxed",), latents=("discrete",), warmup=True)
def concrete(model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
    """Relaxed ELBO with the relaxed (ExpConcrete) KL (Maddison, Mnih & Teh 2017); logs the discrete ELBO.

    Maddison et al. relax the whole model: the latent is the relaxed sample itself, drawn in log
    space (``s = log_softmax((log pi + g) / tau)``, the ExpConcrete, or for a binary unit the
    logistic ``(l + L) / tau``, whose KL is invariant to the map to the simplex), and the KL term
    is the single-sample ``log q_tau(s | x) - log p_lambda(s)`` of the two relaxed densities
    (``terms(mode="relaxed").log_qz_relaxed``, ``log_pz_relaxed``; the prior's temperature lambda
    is the variant's ``prior_tau``). Surrogate: ``-[(1/k) sum_j log p(x | exp s_j) - (log q_tau(s_j)
    - log p_lambda(s_j))]``, reparameterized: biased for the discrete ELBO, as ``gumbel-softmax``.
    Value: the discrete ELBO at the hard samples ``H_j`` of the same perturbations.
    """
    t = model.terms(x, k, params=params, mode="relaxed")
    relaxed_kl = t.log_qz_relaxed - t.log_pz_relaxed  # [k, B]
    surrogate = (t.log_px_z - kl_weight * relaxed_kl).mean(0)
    value = t.log_px_z_hard.mean(0) - t.kl.detach()
    return Estimate(value=value, surrogate=-surrogate.mean())


@register("st-gumbel", modes=("straight-through",), latents=("discrete",), warmup=True)
def st_gumbel(model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
    """Straight-through Gumbel-softmax (Jang et al. 2017; Bengio et al. 2013); logs the discrete ELBO.

    The decoder sees the one-hot ``H_j`` (forward), the gradient is that of the relaxed ``y_j``
    (backward): ``z = H + y - stop_grad(y)``. Surrogate ``-[(1/k) sum_j log p(x | z_j) - KL]``
    (biased); its value is the discrete ELBO estimate, which is what is logged.
    """
    return _relaxed_elbo(model, x, k, params, "straight-through", kl_weight)


@register("reinforce", modes=("score",), latents=("discrete",), warmup=True)
def reinforce(model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
    """Score-function ELBO gradient with a leave-one-out baseline (Williams 1992); unbiased.

    ``ELBO = E_q[log p(x | z)] - KL`` with the analytic categorical KL; phi gets
    ``(log p(x | z_j) - b_j) grad log q(z_j | x) - grad KL``, theta ``grad log p(x | z_j)``
    (``bench.objectives.continuous.score_function_estimate``; baseline over the other ``k - 1``
    samples, or over the other examples of the batch when ``k = 1``). Value: the ELBO estimate.
    """
    return score_function_estimate(model.terms(x, k, params=params, mode="score"), kl_weight)


@register("rloo", modes=("score",), latents=("discrete",), warmup=True)
def rloo(model, x, k: int = 2, params=None, kl_weight: float = 1.0) -> Estimate:
    """REINFORCE leave-one-out on the single-sample ELBO (Kool, van Hoof & Welling 2019); unbiased.

    With ``k >= 2`` samples of each example and ``f_j = log w_j`` (no closed-form KL):

        (1/(k-1)) sum_j (f_j - (1/k) sum_i f_i) grad log q(z_j | x)
          = (1/k) sum_j (f_j - b_j) grad log q(z_j | x),   b_j = (1/(k-1)) sum_{i != j} f_i,

    each sample's baseline the mean of the others (independent of ``z_j``). The generative
    parameters get ``(1/k) sum_j grad log p(x, z_j)``. ``k = 1``: the baseline is the mean of the
    other examples' signals in the batch (``bench.objectives.continuous.loo_baseline``). This is
    DisARM's "REINFORCE LOO" baseline (Dong et al. 2020) at ``k = 2``. Value: the ELBO estimate.
    """
    t = model.terms(x, k, params=params, mode="score")
    return score_function_estimate(dataclasses.replace(t, kl=None), kl_weight)


@register("nvil", modes=("score",), latents=("discrete",), warmup=True)
class NVIL(TrainableObjective):
    """NVIL (Mnih & Gregor 2014): REINFORCE with a learned input-dependent baseline; unbiased.

    REINFORCE on the ELBO with a learned input-dependent baseline, a running constant baseline and
    variance normalization. Learning signal ``f = log w = log p(x, z) - log q(z | x)`` (``z`` an
    exact sample of q); the encoder gets

        ((f - C_psi(x) - c) / max(1, sqrt(v))) grad log q(z | x),

    the generative parameters ``grad log p(x, z)``. ``C_psi``: an MLP ``x -> 100 tanh -> 1`` (as in
    Tucker et al.'s NVIL baseline), trained by regression of the learning signal,
    ``own_loss = mean (f - c - C_psi(x))^2``, with Adam at ``lr_scale`` (10) times the model's
    learning rate (Tucker et al.'s code). ``c`` and ``v``: exponential moving averages (decay
    ``alpha = 0.8``, Mnih & Gregor) of the mean and variance of ``f - C_psi(x)``, updated in training
    mode *after* the batch's signal is formed, so the baseline never depends on the sample it
    centres and the estimator stays unbiased for the gradient of the ELBO (the encoder's part
    divided by ``max(1, sqrt(v))``, a step size; ``normalize=False`` removes it). Buffers ``c``,
    ``v`` and the baseline's weights are in ``state_dict``. ``k`` samples per example share one
    ``C_psi(x)``. Value: the ELBO estimate ``(1/k) sum_j log w_j``.
    """

    betas = (0.9, 0.999)

    def __init__(self, hidden: int = 100, alpha: float = 0.8, normalize: bool = True, lr_scale: float = 10.0):
        super().__init__()
        if not 0 <= alpha < 1 or hidden < 1 or lr_scale <= 0:
            raise ValueError("nvil needs 0 <= alpha < 1, hidden >= 1 and lr_scale > 0")
        self.alpha, self.normalize, self.lr_scale = float(alpha), bool(normalize), float(lr_scale)
        self.baseline = nn.Sequential(nn.LazyLinear(int(hidden)), nn.Tanh(), nn.Linear(int(hidden), 1))
        self.register_buffer("c", torch.zeros(()))
        self.register_buffer("v", torch.ones(()))

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr_scale * lr, betas=self.betas)

    def forward(self, model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
        t = model.terms(x, k, params=params, mode="score")
        f, model_term = learning_signal(t, kl_weight)
        f = f.detach()
        b = self.baseline(flat(x)).squeeze(-1)  # [B]
        centred = f - b.detach()  # [k, B]
        scale = self.v.sqrt().clamp(min=1.0) if self.normalize else 1.0
        signal = (centred - self.c) / scale
        if self.training:
            with torch.no_grad():
                a = self.alpha
                self.c.mul_(a).add_((1 - a) * centred.mean())
                self.v.mul_(a).add_((1 - a) * centred.var(unbiased=False))
        surrogate = -(signal * t.log_qz + model_term).mean(0).mean()
        own_loss = ((f - self.c.detach() - b) ** 2).mean()
        return Estimate(value=t.log_w.mean(0).detach(), surrogate=surrogate, own_loss=own_loss)


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


