"""Unbiased gradient estimators for binary latents: ARM, DisARM, REBAR and RELAX.

They need what only a binary variant gives (declared as ``needs=("binary_terms",)``):
``lambda = model.variational_params(x)``, the logits ``l`` (``[B, n]``) of
``q(b | x) = prod_i Bernoulli(b_i; sigmoid(l_i))``, and ``model.binary_terms(x, b, params=lam)``,
the log-weight terms at *given* codes ``b`` (``[m, B, n]``, binary, or relaxed in ``[0, 1]``).

All four estimate ``grad E_q[f(b)]`` for the single-sample ELBO ``f(b) = log p(x, b) - log q(b | x)``
(as in their papers, no closed-form KL), with the KL warm-up's ``f_beta = log p(x | b) +
beta (log p(b) - log q(b | x))``. The encoder's parameters get the estimator through the logits,
the surrogate term ``sum_i stop_grad(g_i) l_i`` for an estimate ``g`` of ``dE/dl``, or through the
reparameterized control variates; the direct term ``-grad_phi log q(b | x)`` of ``grad f`` is
dropped (its expectation is 0), as the official codes do. The generative parameters (decoder,
prior) get ``grad log p(x, b)`` at the exact samples; no control variate reaches them. Uniform
noise comes from the global generator (``torch.rand``), as every sampler of the project.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bench.objectives.continuous import learning_signal
from bench.objectives.registry import Estimate, TrainableObjective, register
from variants.base import flat

EPS = 1e-6  # uniform noise is kept in [EPS, 1 - EPS]: logit(u) finite


def _uniform(shape, like: Tensor) -> Tensor:
    return torch.rand(shape, device=like.device, dtype=like.dtype).clamp_(EPS, 1 - EPS)


def _antithetic(model, x, k, params, kl_weight, factor) -> Estimate:
    """ARM / DisARM from ``k`` antithetic pairs per example (``2k`` evaluations of ``f``)."""
    x = flat(x)
    lam = model.variational_params(x) if params is None else params  # [B, n]
    u = _uniform((k, *lam.shape), lam)  # [k, B, n]
    b1 = (u > torch.sigmoid(-lam)).to(lam.dtype).detach()  # 1[u > 1 - sigma(l)]
    b2 = (u < torch.sigmoid(lam)).to(lam.dtype).detach()  # 1[u < sigma(l)]
    t = model.binary_terms(x, torch.cat([b1, b2]), params=lam.detach())  # [2k, B]
    f, model_term = learning_signal(t, kl_weight)
    f1, f2 = f.detach().chunk(2)  # [k, B] each
    g = factor(f1.unsqueeze(-1), f2.unsqueeze(-1), u, b1, b2, lam.detach()).mean(0)  # [B, n] ~ dE f / dl
    surrogate = -((g * lam).sum(-1) + model_term.mean(0)).mean()
    return Estimate(value=t.log_w.mean(0).detach(), surrogate=surrogate)


@register("arm", modes=("score",), latents=("discrete",), needs=("binary_terms",), warmup=True)
def arm(model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
    """ARM, augment-REINFORCE-merge (Yin & Zhou 2019): an antithetic pair per sample; unbiased.

    For ``q(b) = prod_i Bernoulli(sigmoid(l_i))`` and one ``u ~ U(0, 1)^n``,
    ``b1 = 1[u > sigmoid(-l)]`` and ``b2 = 1[u < sigmoid(l)]`` are both exact samples of q, and

        d E_q[f(b)] / d l_i  ~=  (f(b1) - f(b2)) (u_i - 1/2),

    averaged over ``k`` independent pairs (``2k`` evaluations of ``f``). The generative parameters
    get the average of ``grad log p(x, b)`` over the ``2k`` codes; the value is the average of
    their ``log w`` (each code is an exact sample of q: an unbiased ELBO estimate).
    """
    return _antithetic(model, x, k, params, kl_weight, lambda f1, f2, u, b1, b2, lam: (f1 - f2) * (u - 0.5))


@register("disarm", modes=("score",), latents=("discrete",), needs=("binary_terms",), warmup=True)
def disarm(model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
    """DisARM (Dong, Mnih & Tucker 2020): ARM with the augmentation integrated out; unbiased.

    The same antithetic pair ``(b1, b2)`` as ARM; conditioning on it removes ``u``:

        d E_q[f(b)] / d l_i  ~=  1/2 (f(b1) - f(b2)) (-1)^{b2_i} 1[b1_i != b2_i] sigmoid(|l_i|),

    never of higher variance than ARM's and zero wherever the pair agrees. ``k`` pairs, the
    generative gradient and the value as in :func:`arm`. Code: google-research ``disarm/binary``.
    """

    def factor(f1, f2, u, b1, b2, lam):
        return 0.5 * (f1 - f2) * (b1 != b2).to(lam.dtype) * (1 - 2 * b2) * torch.sigmoid(lam.abs())

    return _antithetic(model, x, k, params, kl_weight, factor)


class _ConditionalRelaxation(TrainableObjective):
    """REBAR's estimator with a control variate ``c(z)`` (Tucker et al. 2017; Grathwohl et al. 2018).

    Per sample, ``u, v ~ U(0, 1)^n``; ``z = l + logit(u)`` (a logistic reparameterization of the
    code, ``b = H(z) = 1[z > 0]`` an exact sample of q) and ``z~ = l + logit(v')`` with
    ``v' = b (1 - theta + v theta) + (1 - b) v (1 - theta)``, ``theta = sigmoid(l)``: a
    reparameterized sample of ``p(z | b)``. The encoder's gradient is

        [f(b) - c(z~)] grad log q(b | x)  +  grad c(z)  -  grad c(z~),

    unbiased for any ``c`` because ``E[c(z~) grad log q(b)] = E[grad c(z) - grad c(z~)]``.
    ``c`` sees the model with its generative parameters frozen (``binary_terms(...,
    detach_generative=True)``) and the logits live. The signal is multiplied by
    ``log q(b) - stop_grad(log q(b))`` (zero-valued), so that the encoder's gradient, formed with
    ``create_graph``, stays a function of the control variate's parameters: their gradient is the
    gradient of ``sum_c g_c^2``, the estimator's variance up to a constant
    (``minimizes_variance``; Adam with ``beta1 = 0.999`` as the DisARM code's RELAX).
    """

    minimizes_variance = True
    betas = (0.999, 0.999)

    def __init__(
        self, temperature: float = 0.5, learn_temperature: bool = True, eta: float = 1.0, learn_eta: bool = True
    ):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        log_t = torch.tensor(math.log(temperature))
        self.log_temperature = nn.Parameter(log_t, requires_grad=learn_temperature)
        self.eta = nn.Parameter(torch.tensor(float(eta)), requires_grad=learn_eta)

    def control_variate(self, model, x: Tensor, z: Tensor, lam: Tensor, kl_weight: float) -> Tensor:
        """``eta f(sigmoid(z / tau))``: the ELBO integrand at the relaxed code (``[k, B]``)."""
        relaxed = torch.sigmoid(z / self.log_temperature.exp())
        t = model.binary_terms(x, relaxed, params=lam, detach_generative=True)
        return self.eta * learning_signal(t, kl_weight)[0]

    def forward(self, model, x, k: int = 1, params=None, kl_weight: float = 1.0) -> Estimate:
        x = flat(x)
        lam = model.variational_params(x) if params is None else params  # [B, n]
        u, v = _uniform((k, *lam.shape), lam), _uniform((k, *lam.shape), lam)
        z = lam + torch.logit(u)  # [k, B, n]
        b = (z > 0).to(lam.dtype).detach()
        theta = torch.sigmoid(lam)
        v_cond = b * (1 - theta + v * theta) + (1 - b) * v * (1 - theta)  # [k, B, n] in p(u | b)
        z_cond = lam + torch.logit(v_cond.clamp(EPS, 1 - EPS))
        t = model.binary_terms(x, b, params=lam.detach())
        f, model_term = learning_signal(t, kl_weight)
        c_z = self.control_variate(model, x, z, lam, kl_weight)
        c_cond = self.control_variate(model, x, z_cond, lam, kl_weight)
        log_q = (b * lam - F.softplus(lam)).sum(-1)  # log q(b | x), [k, B], live in the logits
        score = log_q - log_q.detach()  # value 0, gradient grad log q
        encoder = (f.detach() - c_cond) * score + c_z - c_cond
        surrogate = -(encoder + model_term).mean(0).mean()
        return Estimate(value=t.log_w.mean(0).detach(), surrogate=surrogate)


@register("rebar", modes=("score",), latents=("discrete",), needs=("binary_terms",), warmup=True)
class REBAR(_ConditionalRelaxation):
    """REBAR (Tucker et al. 2017): a Concrete control variate trained for low variance; unbiased.

    Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017: the Concrete relaxation as a control
    variate, its scale eta and temperature tau trained to minimize the variance:
    ``c(z) = eta f(sigmoid(z / tau))`` in the estimator of :class:`_ConditionalRelaxation`, with
    ``tau`` (log-parametrized, initially ``temperature = 0.5``) and ``eta`` (initially 1) learned
    by the gradient of the squared gradient; ``learn_temperature=False`` / ``learn_eta=False``
    fix them (objective options). ``k`` independent samples, 3 evaluations of ``f`` each. One
    scalar eta for the whole layer (Tucker et al. use one per parameter tensor).
    """


@register("relax", modes=("score",), latents=("discrete",), needs=("binary_terms",), warmup=True)
class RELAX(_ConditionalRelaxation):
    """RELAX (Grathwohl et al. 2018): REBAR's control variate plus a learned network; unbiased.

    Grathwohl, Choi, Wu, Roeder & Duvenaud 2018: REBAR's control variate plus a learned network,
    all trained to minimize the variance: ``c(z) = eta [f(sigmoid(z / tau)) + r_rho(x, z)]`` in
    the estimator of :class:`_ConditionalRelaxation` (Grathwohl et al.'s "relaxed REBAR" for the binary VAE, in the
    form of the DisARM code): ``r_rho`` an MLP on ``[x, z]`` with ``hidden`` (137) LeakyReLU(0.3)
    units, its output layer zero-initialized (RELAX starts as REBAR); ``eta``, ``tau`` and ``rho``
    learned by the gradient of the squared gradient. ``k`` independent samples, 3 evaluations
    of ``f`` and 2 of ``r`` each.
    """

    def __init__(self, hidden: int = 137, **options):
        super().__init__(**options)
        self.net = nn.Sequential(nn.LazyLinear(int(hidden)), nn.LeakyReLU(0.3), nn.Linear(int(hidden), 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def control_variate(self, model, x, z, lam, kl_weight):
        r = self.net(torch.cat([x.expand(*z.shape[:-1], x.shape[-1]), z], -1)).squeeze(-1)
        return super().control_variate(model, x, z, lam, kl_weight) + self.eta * r
