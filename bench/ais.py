"""Annealed importance sampling (AIS) with HMC, and bidirectional Monte Carlo (BDMC).

AIS (Neal 2001) for a VAE, as Wu, Burda, Salakhutdinov & Grosse (2017, "On the quantitative
analysis of decoder-based generative models") use it: intermediate densities from the prior to
the posterior,

    f_t(z) = p(z) p(x | z)^{beta_t},    0 = beta_0 < beta_1 < ... < beta_T = 1,

with ``z_0 ~ p(z)`` and, for t = 1..T, the weight update then one HMC transition that leaves
``f_t`` invariant:

    log w += (beta_t - beta_{t-1}) log p(x | z_{t-1}),    z_t ~ HMC_t(z_{t-1}).

``E[w] = p(x)``, so ``log mean_c w_c`` over ``C`` independent chains is a stochastic lower bound of
``log p(x)`` (in expectation, by Jensen) that tightens with ``T`` and ``C``.

* Schedule: the sigmoid schedule of Wu et al. (sec. 6.2), ``gamma_t = sigmoid(r (2t/T - 1))``,
  ``beta_t = (gamma_t - gamma_0) / (gamma_T - gamma_0)``, ``r = 4``: more steps near 0 and 1.
* HMC: ``leapfrog`` steps of size ``eps`` with unit mass, ``U(z) = -log f_t(z)``, a Metropolis
  accept/reject on ``U + |v|^2 / 2`` (a proposal whose energy is not finite is rejected). Each
  chain's step is jittered uniformly within +-50% at every transition (Neal 2011, "MCMC using
  Hamiltonian dynamics", sec. 5.4.2.2): with a fixed trajectory length, HMC on a near-Gaussian
  target can be nearly periodic in some directions and stop mixing there. Measured on the pPCA
  oracle (64 chains): the per-chain log-weight s.d. was 0.50 / 0.42 at T = 500 / 2000 without the
  jitter, 0.30 / 0.15 with it (the 1/sqrt(T) of a mixing chain).
* Step size: per example (shared by its chains), multiplied by 1.02 after a step whose mean
  acceptance probability exceeded ``target_accept`` (0.65) and by 0.98 otherwise, within
  [1e-4, 0.5] (as Wu et al.'s and Grosse et al.'s codes do). The acceptance is measured on
  ``pilot_chains`` extra chains per example that follow the same schedule and are left out of
  the estimate: the kernels the counted chains see then do not depend on their own past, which
  keeps ``E[w] = p(x)`` exact (adapting on the counted chains themselves makes the kernel a
  function of the chain's history, which the AIS argument does not cover).

With a learned prior (``variants.priors``) ``z_0 ~ p(z)``, ``f_t`` and BDMC's simulated data use
it: every prior term goes through the variant's ``sample_prior`` and ``log_prior``.

BDMC (Grosse, Ghahramani & Adams 2015): on data simulated from the model, ``(z*, x) ~ p(z) p(x |
z)``, ``z*`` is an exact sample of ``p(z | x)``. Reverse AIS starts there and anneals from
``beta = 1`` to 0 with the forward run's kernels (its step sizes, in reverse), accumulating
``log w' += (beta_{t-1} - beta_t) log p(x | z_t)``; ``E[w'] = 1 / p(x)``, so ``-log mean_c w'_c`` is
a stochastic *upper* bound. Forward and reverse bracket ``log p(x)``; the bracket's width bounds
the forward AIS's error on data like these.

Shapes: ``x [B, D]``; chains ``z [C, B, L]`` over the whole latent (``L`` = every stochastic
layer's size); results ``[B]``. Needs the joint-latent contract of ``variants.base.VAE``:
``sample_prior(n)``, ``log_prior(z)``, ``decode(z)``. Runs in eval mode; no parameter changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.passes import evaluating, sized_chunk
from variants import priors
from variants.base import VAE, flat

STEP_MIN, STEP_MAX = 1e-4, 0.5
JITTER = 0.5


def unsupported(model: nn.Module) -> str | None:
    """Why AIS (and BDMC) cannot run on ``model`` (a variant instance or class), or ``None``."""
    cls = model if isinstance(model, type) else type(model)
    name = getattr(cls, "name", cls.__name__)
    if getattr(cls, "latent", "continuous") != "continuous":
        return f"annealed importance sampling with HMC needs a continuous latent; {name!r}'s is {cls.latent}"
    missing = [m for m in ("sample_prior", "log_prior", "decode")
               if getattr(cls, m, None) in (None, getattr(VAE, m))]
    if missing:
        return f"{name!r} does not give its whole latent's prior and likelihood ({', '.join(missing)})"
    return None


def sigmoid_schedule(n_steps: int, radius: float = 4.0, device=None, dtype=torch.float64) -> Tensor:
    """``beta_0..beta_T`` (``[T + 1]``), ``T = n_steps``: Wu et al.'s sigmoid schedule, exactly 0 and 1
    at the ends."""
    if n_steps < 1:
        raise ValueError(f"AIS needs n_steps >= 1, got {n_steps}")
    g = torch.sigmoid(torch.linspace(-radius, radius, n_steps + 1, device=device, dtype=dtype))
    return (g - g[0]) / (g[-1] - g[0])


def _energy(model: nn.Module, x: Tensor, z: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(log p(x | z), U, dU/dz)`` with ``U = -(log p(z) + beta log p(x | z))``, each per chain."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_lik = model.decode(z).log_prob(x)
        u = -(model.log_prior(z) + beta * log_lik)
        (grad,) = torch.autograd.grad(u.sum(), z)
    return log_lik.detach(), u.detach(), grad


def _hmc(model: nn.Module, x: Tensor, z: Tensor, beta: float, eps: Tensor, leapfrog: int) -> Tensor:
    """One HMC transition at ``beta`` for chains ``z [C, b, L]`` with step sizes ``eps [b]``, in
    place (``z`` becomes the new state): the acceptance probability ``[C, b]``."""
    _, u0, g = _energy(model, x, z, beta)
    e = (eps * (1 + JITTER * (2 * torch.rand(z.shape[:-1], dtype=z.dtype, device=z.device) - 1)))[..., None]
    v0 = torch.randn_like(z)
    v = v0 - 0.5 * e * g
    zp = z
    for i in range(leapfrog):
        zp = zp + e * v
        _, u1, g = _energy(model, x, zp, beta)
        v = v - (e if i < leapfrog - 1 else 0.5 * e) * g
    log_accept = (u0 + 0.5 * (v0 * v0).sum(-1)) - (u1 + 0.5 * (v * v).sum(-1))
    log_accept = torch.where(torch.isfinite(log_accept), log_accept, torch.full_like(log_accept, -math.inf))
    prob = log_accept.clamp_max(0).exp()
    accept = torch.rand_like(prob) < prob
    torch.where(accept[..., None], zp, z, out=z)
    return prob


@torch.no_grad()
def anneal(
    model: nn.Module,
    x: Tensor,
    z: Tensor,
    betas: Tensor,
    eps: Tensor,
    *,
    leapfrog: int = 10,
    target_accept: float = 0.65,
    pilot_chains: int = 4,
    fixed_eps: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The AIS core: chains ``z [C + pilot_chains, b, L]`` started at ``f_{beta_0}``, annealed along
    ``betas`` (``[T + 1]``; increasing: forward, decreasing: reverse). Returns ``(log w [C, b]`` of
    the counted chains, ``step sizes [T - 1, b]`` of the kernels run``)``.

    Step ``t = 1..T`` adds ``(beta_t - beta_{t-1}) log p(x | z)`` to ``log w`` and then, except
    after the last update (whose kernel would not change the weight), runs one HMC transition at
    ``beta_t``, with step sizes ``fixed_eps[t - 1]`` if given (BDMC's reverse pass reuses the
    forward pass's, flipped), else ``eps [b]`` adapted on the last ``pilot_chains`` chains.
    """
    # The chains, the step sizes and the trace are allocated once and updated in place at every
    # step (``z`` and ``eps`` are copied first: the caller's are left alone), so that no small
    # tensor made by one step outlives it among the large transient ones of the next (a list of
    # per-step results fragmented glibc's heap in the log-weight passes: bench.metrics).
    log_w = torch.zeros(z.shape[:-1], dtype=torch.promote_types(z.dtype, torch.float32), device=z.device)
    z, eps = z.clone(), eps.clone()
    n_trace = len(betas) - 2
    if n_trace > 0:
        kind = eps if fixed_eps is None else fixed_eps
        trace = torch.empty(n_trace, *kind.shape[-1:], dtype=kind.dtype, device=kind.device)
    else:
        trace = torch.zeros(0, z.shape[1], dtype=z.dtype, device=z.device)
    for t in range(1, len(betas)):
        b0, b1 = float(betas[t - 1]), float(betas[t])
        log_w += (b1 - b0) * model.decode(z).log_prob(x)
        if t == len(betas) - 1:
            break
        step = eps if fixed_eps is None else fixed_eps[t - 1]
        trace[t - 1].copy_(step)
        prob = _hmc(model, x, z, b1, step, leapfrog)
        if fixed_eps is None and pilot_chains > 0:
            rate = prob[-pilot_chains:].mean(0)
            eps.mul_(torch.where(rate > target_accept, 1.02, 0.98)).clamp_(STEP_MIN, STEP_MAX)
        del prob
    counted = z.shape[0] - pilot_chains
    return log_w[:counted], trace


def draws_per_pass(model: nn.Module, x: Tensor, chunk: int = 0) -> int:
    """Latent draws (chains x examples) per decoder pass: ``chunk`` if it is positive, else sized
    for the device by what one draw of an HMC energy evaluation (a decoder pass and its gradient)
    allocates (``bench.passes.sized_chunk``, probed on up to 4 examples of ``x``)."""
    if chunk > 0:
        return chunk
    b = min(4, x.shape[0])

    def energy(n: int) -> None:
        _energy(model, x[:b], model.sample_prior(n * b).reshape(n, b, -1), 0.5)

    return sized_chunk(energy, b, x.device, model, ("ais", b, tuple(x.shape[1:]), x.dtype, str(x.device)))


def _batches(x: Tensor, chains: int, chunk: int):
    """``(start, x[start : start + b])`` with ``chains x b <= chunk`` (at least one example)."""
    b = max(1, chunk // chains)
    for i in range(0, x.shape[0], b):
        yield i, x[i : i + b]


def _log_mean_exp(a: Tensor) -> Tensor:
    return torch.logsumexp(a, 0) - math.log(a.shape[0])


@dataclass(frozen=True)
class Settings:
    """AIS's knobs (the module docstring gives their meaning): ``n_chains`` counted chains per
    example, ``n_steps`` intermediate distributions, ``leapfrog`` steps per HMC transition, the
    initial ``step_size``, the ``target_accept`` rate the step size is tuned toward, and the number
    of ``pilot_chains`` it is tuned on."""

    n_chains: int = 16
    n_steps: int = 500
    leapfrog: int = 10
    step_size: float = 0.05
    target_accept: float = 0.65
    pilot_chains: int = 4

    def __post_init__(self) -> None:
        if self.n_chains < 1 or self.pilot_chains < 1 or self.leapfrog < 1:
            raise ValueError(f"AIS needs n_chains, pilot_chains and leapfrog >= 1, got {self}")


@torch.no_grad()
def forward_chains(model: nn.Module, x: Tensor, s: Settings = Settings(), chunk: int = 0
                   ) -> tuple[Tensor, Tensor]:
    """Forward AIS on ``x [B, D]`` with the model already in eval mode: ``(log w [n_chains, B]`` of
    every counted chain, ``step sizes [n_steps - 1, B])``. ``logmeanexp`` over the chains is the
    estimate; their spread is its Monte Carlo error. ``chunk``: :func:`draws_per_pass`."""
    reason = unsupported(model)
    if reason:
        raise NotImplementedError(reason)
    chunk = draws_per_pass(model, x, chunk)
    betas = sigmoid_schedule(s.n_steps, device=x.device)
    out = traces = None  # [n_chains, B], [n_steps - 1, B]: allocated at the first batch, filled by each
    c = s.n_chains + s.pilot_chains
    for i, xb in _batches(x, c, chunk):
        z = model.sample_prior(c * xb.shape[0]).reshape(c, xb.shape[0], -1)
        eps = torch.full((xb.shape[0],), s.step_size, dtype=z.dtype, device=z.device)
        log_w, trace = anneal(model, xb, z, betas, eps, leapfrog=s.leapfrog, target_accept=s.target_accept,
                              pilot_chains=s.pilot_chains)
        if out is None:
            out = log_w.new_empty(log_w.shape[0], x.shape[0])
            traces = trace.new_empty(trace.shape[0], x.shape[0])
        out[:, i : i + xb.shape[0]].copy_(log_w)
        traces[:, i : i + xb.shape[0]].copy_(trace)
        del z, eps, log_w, trace
    return out, traces


@torch.no_grad()
def ais_log_likelihood(
    model: nn.Module, x: Tensor, n_chains: int = 16, n_steps: int = 500, *, chunk: int = 0, **options
) -> Tensor:
    """``log p(x)`` by forward AIS from the prior, ``[B]`` (see the module docstring): ``n_chains``
    chains per example, ``n_steps`` intermediate distributions on the sigmoid schedule, HMC with
    the other :class:`Settings` as ``options`` (``leapfrog=10``, ``step_size=0.05``,
    ``target_accept=0.65``, ``pilot_chains=4``). A stochastic lower bound. At most ``chunk`` latent
    draws (``(n_chains + pilot_chains) x examples``) per decoder pass (``0``: sized for the device,
    :func:`draws_per_pass`). Cost: about ``n_steps
    (leapfrog + 2)`` decoder passes, forward and backward, per chunk. Eval mode; raises
    ``NotImplementedError`` with :func:`unsupported`'s reason on a variant it does not apply to."""
    settings = Settings(n_chains, n_steps, **options)
    with evaluating(model), priors.fixed(model):  # a VampPrior's components computed once
        log_w, _ = forward_chains(model, flat(x), settings, chunk)
    return _log_mean_exp(log_w)


@torch.no_grad()
def bdmc(
    model: nn.Module,
    n: int,
    *,
    n_chains: int = 16,
    n_steps: int = 500,
    chunk: int = 0,
    data: tuple[Tensor, Tensor] | None = None,
    **options,
) -> tuple[Tensor, Tensor]:
    """Bidirectional Monte Carlo (Grosse et al. 2015) on ``n`` points simulated from the model,
    ``(z*, x) ~ p(z) p(x | z)``: ``(lower [n], upper [n])``, the forward-AIS and reverse-AIS
    estimates of each ``log p(x)`` (stochastic lower and upper bounds). The reverse chains (all
    ``n_chains`` of a point start at its exact latent ``z*``) apply the forward run's kernels in
    reverse order (the same step sizes), so nothing is adapted on chains that are counted. The
    settings are :func:`ais_log_likelihood`'s. ``data``: the simulated ``(z* [n, L], x [n, D])``
    if the caller drew them (default: drawn here from the global generator). Eval mode."""
    settings = Settings(n_chains, n_steps, **options)
    with evaluating(model), priors.fixed(model):
        reason = unsupported(model)
        if reason:
            raise NotImplementedError(reason)
        if data is None:
            z_star = model.sample_prior(n)  # [n, L]
            x = model.decode(z_star).sample()
        else:
            z_star, x = data[0], flat(data[1])
            if len(z_star) != n or len(x) != n:
                raise ValueError(f"bdmc: data must hold n = {n} points, got {len(z_star)} and {len(x)}")
        chunk = draws_per_pass(model, x, chunk)
        log_w, trace = forward_chains(model, x, settings, chunk)
        lower = _log_mean_exp(log_w)
        betas = sigmoid_schedule(n_steps, device=x.device).flip(0)
        upper = torch.empty(n, dtype=torch.promote_types(z_star.dtype, torch.float32), device=z_star.device)  # see anneal
        for i, xb in _batches(x, n_chains, chunk):
            b = xb.shape[0]
            z = z_star[i : i + b].expand(n_chains, b, -1).clone()
            fixed = trace[:, i : i + b].flip(0)
            log_w, _ = anneal(model, xb, z, betas, z.new_zeros(b), leapfrog=settings.leapfrog, pilot_chains=0,
                              fixed_eps=fixed)
            torch.neg(_log_mean_exp(log_w), out=upper[i : i + b])
            del z, fixed, log_w
    return lower, upper
