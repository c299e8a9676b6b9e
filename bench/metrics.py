"""The measurements: pure functions of (model, data), no logging inside, device-agnostic.

Shapes: ``x`` is ``[B, *x_shape]`` (or flat ``[B, D]``); ``model.log_weights(x, k, params)`` is
``[k, B]`` with ``log w_j = log p(x, z_j) - log q(z_j | x)``, ``z_j ~ q(. | x)``.

* :func:`log_likelihood`   the importance-weighted estimate of ``log p(x)`` (Burda et al. 2016),
                           streamed over chunks of samples and examples.
* :func:`gaps`             the approximation / amortization decomposition (Cremer, Li & Duvenaud 2018).
* :func:`gradient_stats`   variance and signal-to-noise ratio of gradient estimators (Rainforth et al. 2018),
                           the SNR with its finite-n noise floor removed and an interval (``bench.snr``).
* :func:`active_units`     units with ``Cov_x(E_q[z_u | x]) > 0.01`` (Burda et al. 2016), pooled or per layer.
* :func:`ais_log_likelihood`, :func:`bdmc`   annealed importance sampling (Wu et al. 2017) and
                           bidirectional Monte Carlo (Grosse et al. 2015), from ``bench.ais``.
* :func:`ais_unsupported`, :func:`layers_unsupported`   why a measurement does not apply to a
                           variant (a sentence), or ``None``: such metrics are not logged, never NaN.
* :func:`time_step`, :func:`peak_memory_mb`   throughput and memory, synchronized on CUDA.

Evaluations (``log_likelihood``, ``gaps``, ``active_units``) run the model in eval mode and put
back every submodule's previous mode afterwards; ``gradient_stats`` keeps the training mode (it
measures the training gradient) and restores the buffers. None of them changes a parameter.

Every function runs on the device and dtype of its inputs and of the model's parameters.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench import ais, objectives, snr
from bench.passes import common_random_numbers, evaluating, sized_chunk
from bench.vocabulary import GRADIENT_STATS  # per group, see bench.snr
from variants import priors

DEFAULT_CHUNK = 2**16  # latent draws per pass of posterior_means (the active units)


@torch.no_grad()
def log_weight_chunk(model: nn.Module, x: Tensor, params: Tensor | None = None, chunk: int = 0) -> int:
    """Log-weights per pass of ``model.log_weights`` on ``x`` (``[B, ...]``; ``params`` as in
    :func:`log_weight_moments`): ``chunk`` if it is positive, else sized for the device
    (``bench.passes.sized_chunk``, probed on up to 4 examples)."""
    if chunk > 0:
        return chunk
    b = min(4, x.shape[0])
    p = None if params is None else params[:b]
    key = ("log_weights", b, tuple(x.shape[1:]), x.dtype, str(x.device), None if p is None else tuple(p.shape[1:]), model.training)
    return sized_chunk(lambda n: model.log_weights(x[:b], n, params=p), b, x.device, model, key)


def _chunks(B: int, k: int, chunk: int) -> tuple[int, int]:
    """``(examples, samples)`` per forward pass so that their product is at most ``chunk``
    (at least one of each): all ``k`` samples of an example first, then as many examples as fit
    (every pass runs the encoder on its examples: splitting an example's samples over passes
    repeats that work)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 log-weights, got {chunk}")
    kc = max(1, min(k, chunk))
    return max(1, min(B, chunk // kc)), kc


@torch.no_grad()
def log_weight_moments(
    model: nn.Module, x: Tensor, k: int, *, params: Tensor | None = None, chunk: int = 0
) -> tuple[Tensor, Tensor]:
    """``(logsumexp_j log w_j, sum_j log w_j)``, each ``[B]``, over ``k`` draws ``z_j ~ q``.

    The pure streaming core of :func:`log_likelihood` and :func:`gaps`: ``model.log_weights`` is
    called on at most ``chunk`` log-weights at a time (``[k_c, B_c]``; ``chunk = 0``: sized for the
    device, :func:`log_weight_chunk`); chunks over samples are combined by ``logaddexp`` (a
    streaming log-sum-exp) and a running sum, accumulated in at least float32 (float64 stays
    float64). ``params`` (``[B, P]``, optional) are sliced with the batch. From one pass: the ELBO
    estimate is ``sum / k`` and the IWAE estimate ``lse - log k``.
    """
    B = x.shape[0]
    b, kc = _chunks(B, k, log_weight_chunk(model, x, params, chunk))
    # The outputs and the per-pass scratch are allocated once, at the first pass, and every pass
    # writes into them (``out=``, in place): no small tensor made by one pass outlives it among the
    # large transient ones of the next (a list of per-chunk results, a re-created running
    # accumulator), which fragmented glibc's heap by 2-4 MB a pass (see :func:`peak_memory_mb`).
    # The arithmetic and its order are those of ``c = lse_j; lse = logaddexp(lse, c)``.
    lse_out = sum_out = c_lse = c_sum = None
    for i in range(0, B, b):
        xi = x[i : i + b]
        pi = None if params is None else params[i : i + b]
        done = 0
        while done < k:
            n = min(kc, k - done)
            lw = model.log_weights(xi, n, params=pi)
            lw = lw.to(torch.promote_types(lw.dtype, torch.float32))
            if lse_out is None:
                lse_out, sum_out = lw.new_empty(B), lw.new_empty(B)
                c_lse, c_sum = lw.new_empty(b), lw.new_empty(b)
            lse, s = lse_out[i : i + b], sum_out[i : i + b]
            if done == 0:
                torch.logsumexp(lw, 0, out=lse)
                torch.sum(lw, 0, out=s)
            else:
                cl, cs = c_lse[: lse.shape[0]], c_sum[: lse.shape[0]]
                torch.logsumexp(lw, 0, out=cl)
                torch.sum(lw, 0, out=cs)
                torch.logaddexp(lse, cl, out=lse)
                s.add_(cs)
            del lw
            done += n
    if lse_out is None:  # no examples
        lse_out = x.new_empty(0, dtype=torch.promote_types(x.dtype, torch.float32))
        sum_out = torch.empty_like(lse_out)
    return lse_out, sum_out


def log_likelihood(model: nn.Module, x: Tensor, k: int = 5000, chunk: int = 0) -> Tensor:
    """The importance-weighted estimate of ``log p(x)``, ``[B]`` (Burda et al. 2016):

        log p(x) ~= log (1/k) sum_{j=1..k} p(x, z_j) / q(z_j | x),    z_j ~ q(z | x),

    a stochastic lower bound (in expectation) that increases to ``log p(x)`` as ``k`` grows.
    Memory is bounded by ``chunk`` log-weights per forward pass (``0``: sized for the device; see
    :func:`log_weight_moments`); the result does not depend on the chunking beyond Monte Carlo
    noise. No gradients; eval mode.
    """
    with evaluating(model), priors.fixed(model):  # a VampPrior's components computed once
        lse, _ = log_weight_moments(model, x, k, chunk=chunk)
    return lse - math.log(k)


# -- the gap decomposition -------------------------------------------------------------------------


def optimize_local(
    model: nn.Module,
    x: Tensor,
    lam: Tensor,
    *,
    steps: int = 2000,
    lr: float = 5e-2,
    k: int = 10,
    tol: float = 1e-3,
    window: int = 50,
    patience: int = 2,
) -> tuple[Tensor, int]:
    """Free per-datapoint variational parameters fitted with the model frozen: ``(lam*, steps run)``.

    Maximizes the bound of ``model.local_objective`` (``bench.objectives.build(name)(model, x, k,
    params=lam)``) over ``lam`` (``[B, P]``, all datapoints in one tensor) with Adam (per-coordinate
    steps, so each datapoint's parameters move at their own scale) and ``k`` samples per step. The
    gradient is taken with respect to ``lam`` only (``torch.autograd.grad``), so no model parameter
    or ``.grad`` changes. Stopping rule: every ``window`` steps the mean bound over that window
    (nats per example, batch average; averaging ``window * k`` draws damps the Monte Carlo noise)
    is compared with the best window so far; it stops when ``patience`` windows in a row improve
    on it by less than ``tol`` (one noisy window does not end a run that is still climbing), or
    after ``steps`` steps. Returns the average of ``lam`` over the last window (Polyak averaging
    removes most of Adam's stationary jitter at a constant ``lr``; on the pPCA oracle the result
    is within ~0.005 nats of the best diagonal Gaussian, see tests/test_metrics.py).
    """
    if steps < 1:
        return lam.detach(), 0
    objective = objectives.build(model.local_objective)
    lam = lam.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([lam], lr=lr)
    best, stale = -math.inf, 0
    acc = torch.zeros((), device=lam.device, dtype=torch.float32)
    avg = torch.zeros_like(lam, dtype=torch.promote_types(lam.dtype, torch.float32))
    step = start = 0
    while True:
        est = objective(model, x, k, params=lam)
        (lam.grad,) = torch.autograd.grad(est.surrogate, lam)
        opt.step()
        step += 1
        acc += est.value.mean()
        avg += lam.detach()
        if step % window == 0 or step >= steps:
            cur = float(acc) / (step - start)  # one host sync per window
            lam_avg = (avg / (step - start)).to(lam.dtype)
            stale = stale + 1 if cur < best + tol else 0
            best = max(best, cur)
            if step >= steps or stale >= patience:
                return lam_avg, step
            start = step
            acc.zero_()
            avg.zero_()



def gaps(
    model: nn.Module,
    x: Tensor,
    *,
    k_eval: int = 5000,
    local_steps: int = 2000,
    local_lr: float = 5e-2,
    local_k: int = 10,
    tol: float = 1e-3,
    window: int = 50,
    patience: int = 2,
    log_px: Tensor | None = None,
    log_px_lower: Tensor | None = None,
    chunk: int = 0,
) -> dict[str, Tensor]:
    """The inference gap ``log p(x) - ELBO(q_enc)`` split into two parts, per example
    (Cremer, Li & Duvenaud 2018, "Inference suboptimality in variational autoencoders"):

        approximation = log p(x) - ELBO(q_local)       the family's limit (q* = best member),
        amortization  = ELBO(q_local) - ELBO(q_enc)     the encoder's shortfall from q*,

    where ``q_enc`` has the encoder's parameters and ``q_local`` free per-datapoint parameters
    initialized there and optimized with the model frozen (:func:`optimize_local`:
    ``local_steps``, ``local_lr``, ``local_k``, ``tol``, ``window``). The parameters are
    ``lambda(x) = model.local_params(x)`` where the variant defines it (the local family of a flow
    whose networks act after ``variational_params``: one copy of them per datapoint), else
    ``model.variational_params(x)``. Both ELBOs are ``mean_j log w_j`` over ``k_eval`` draws of
    ``model.log_weights(x, k, params=...)``, so they are comparable whatever objective the variant
    trains or optimizes with, and they use common random numbers (the same seed, so the same
    base noise for both ``lambda``): their difference, the amortization gap, has far less Monte
    Carlo noise than either ELBO.

    The encoder's ``lambda`` is a feasible point of the local problem: where the optimizer ended
    no higher (a noisy score-function ascent on discrete logits can end below its start), the
    best candidate found is the encoder's, so ``elbo_local = max(ELBO(q_local), ELBO(q_enc))`` and
    ``amortization >= 0``; ``local_no_gain`` (``1.0`` / ``0.0`` per example) marks those examples.

    ``log_px`` (``[B]``), if not given, is the IWAE estimate with ``k_eval`` samples under the
    proposal that won the comparison above per example (``q_local`` where it gained, else
    ``q_enc``), i.e. the one closer to the posterior in ``KL(q || p(z|x))``; choosing by the IWAE
    values themselves would pick the upward Monte Carlo errors of a poor proposal. Since both come
    from the same draws as the winning ELBO, ``approximation >= 0`` up to float rounding.
    ``log_px_lower`` (``[B]``, optional): another stochastic lower bound of ``log p(x)`` per
    example (annealed importance sampling, :func:`ais_log_likelihood`); the estimate is then the
    larger of the two per example (Cremer et al. take the better of IWAE and AIS).

    ``chunk``: log-weights per pass of the two ELBO / IWAE evaluations (``0``: sized for the device,
    :func:`log_weight_chunk`). Returns ``[B]`` tensors (detached) under keys ``log_px``,
    ``elbo_amortized``, ``elbo_local``, ``approximation``, ``amortization``, ``local_no_gain``.
    Runs in eval mode.
    """
    with evaluating(model), priors.fixed(model):  # a VampPrior's components computed once
        with torch.no_grad():
            lam_enc = getattr(model, "local_params", model.variational_params)(x)
        lam_local, _ = optimize_local(
            model, x, lam_enc, steps=local_steps, lr=local_lr, k=local_k, tol=tol,
            window=window, patience=patience,
        )
        seed = int(torch.randint(2**62, (), device="cpu"))
        with common_random_numbers(seed, x.device):
            lse_enc, sum_enc = log_weight_moments(model, x, k_eval, params=lam_enc, chunk=chunk)
        with common_random_numbers(seed, x.device):
            lse_loc, sum_loc = log_weight_moments(model, x, k_eval, params=lam_local, chunk=chunk)
    elbo_amortized, elbo_optimized = sum_enc / k_eval, sum_loc / k_eval
    gain = elbo_optimized > elbo_amortized  # chosen before the max, which makes it always true
    elbo_local = torch.where(gain, elbo_optimized, elbo_amortized)
    if log_px is None:
        log_px = torch.where(gain, lse_loc, lse_enc) - math.log(k_eval)
        if log_px_lower is not None:
            log_px = torch.maximum(log_px, log_px_lower.to(log_px))
    log_px = log_px.detach().to(elbo_local.dtype)
    return {
        "log_px": log_px,
        "elbo_amortized": elbo_amortized,
        "elbo_local": elbo_local,
        "approximation": log_px - elbo_local,
        "amortization": elbo_local - elbo_amortized,
        "local_no_gain": (~gain).to(elbo_local.dtype),
    }


# -- gradient variance and SNR -------------------------------------------------------------------

_GROUPS = ("encoder", "decoder")


def _restore(modules: list[nn.Module], saved: list[dict[str, Tensor]]) -> None:
    """Copy the saved buffers back into ``modules``."""
    with torch.no_grad():
        for m, s in zip(modules, saved):
            for name, b in m.named_buffers():
                b.copy_(s[name])


def gradient_stats(
    model: nn.Module,
    x: Tensor,
    objective: str | Callable,
    n: int = 100,
    k: int = 1,
) -> dict[str, float]:
    """Variance and SNR of the gradient estimator ``objective`` at the model's current parameters.

    Draws ``g_1..g_n``, each the gradient of ``objective(model, x, k).surrogate`` with respect to
    the model's parameters, with fresh randomness (one backward each) on the *fixed* batch ``x``.
    Per parameter coordinate ``c``: the mean ``m_c`` and unbiased variance ``s_c^2`` of the draws;
    then per group of ``model.parameter_groups()`` (``encoder``, ``decoder``), over the live
    coordinates (identically zero ones are left out), ``bench.snr.summarize`` gives

        {group}_var        mean_c s_c^2
        {group}_snr        the median over the live coordinates of |E g_c| / sd(g_c) (Rainforth
                           et al. 2018), deterministic coordinates counted as +inf, estimated
                           with the finite-n noise removed (an empirical-Bayes deconvolution of
                           t_c = sqrt(n) m_c / s_c, see bench.snr)
        {group}_snr_lo/hi  its 95% interval (jackknife over 10 groups of draws, the dropped
                           coordinates' possible SNRs, the measured bias allowance)
        {group}_snr_floor  what the plug-in median_c |m_c| / s_c reads at zero signal for this n
                           (t_{0.75, n-1} / sqrt(n), about 0.674 / sqrt(n))
        {group}_snr_ratio  mean_c E[g_c]^2 / mean_c Var g_c, the squared-SNR ratio of averages of
                           the official DReG code (Tucker et al. 2019), E[g_c]^2 = m_c^2 - s_c^2/n
        {group}_snr_det    the share of the live coordinates that are deterministic (s_c at the
                           float32 rounding level of m_c)
        {group}_snr_dropped  the share of the group's coordinates identically zero in every draw

    A trainable objective (an ``nn.Module``: NVIL, REBAR, RELAX) adds the group ``objective``: the
    draws of its own parameters' training gradient (``bench.objectives.gradients``).

    A deterministic gradient gives ``inf`` SNRs, a group no gradient reaches 0 (never NaN).
    The surrogate is a mean over the batch, so for i.i.d. examples the variance falls as ``1/B``.
    ``objective`` is a registered name (a fresh instance from ``bench.objectives.build``) or such a
    callable ``(model, x, k, params=None) -> Estimate``. Gradients are taken with
    ``torch.autograd.grad``: the parameters' ``.grad`` are untouched. The buffers of the model and
    of a trainable objective (running statistics a forward pass in training mode may update, such
    as NVIL's centre ``c`` and scale ``v``) are restored before every draw and afterwards: each
    draw is the gradient that one training step would take from the same state, so the ``n``
    draws are identically distributed (without it NVIL's ``v`` drifts over the draws and the
    later draws are scaled differently from the first). Returns ``{f"{group}_{stat}"}`` for the groups and
    :data:`GRADIENT_STATS`, as floats.
    """
    if n < 2:
        raise ValueError(f"gradient_stats needs n >= 2 draws for a variance, got {n}")
    if isinstance(objective, str):
        objectives.check_applies(objective, type(model))
        objective = objectives.build(objective)
    stateful = [model, objective] if isinstance(objective, nn.Module) else [model]
    buffers = [{name: b.detach().clone() for name, b in m.named_buffers()} for m in stateful]
    all_groups = model.parameter_groups()
    if isinstance(objective, nn.Module):  # a trainable objective: its own group (bench.objectives)
        objective(model, x, k)  # (sizes lazily built networks; buffers are restored below)
        all_groups = {**all_groups, "objective": objectives.own_parameters(objective)}
    names = [*_GROUPS, "objective"] if all_groups.get("objective") else list(_GROUPS)
    groups = {g: [p for p in all_groups.get(g, []) if p.requires_grad] for g in names}
    params = [p for g in _GROUPS for p in groups[g]]
    own = groups.get("objective", [])
    device = params[0].device if params else x.device
    stats = snr.GradientMoments(sum(p.numel() for p in params + own), device)
    try:
        for _ in range(n):
            _restore(stateful, buffers)  # every draw from the same state (NVIL's c, v moved in the last)
            est = objective(model, x, k)
            grads, own_grads = objectives.gradients(objective, est, params, groups["encoder"])
            stats.update(
                torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                           for p, g in zip(params + own, grads + own_grads)])
            )
    finally:
        _restore(stateful, buffers)
    out: dict[str, float] = {}
    start = 0
    for group in names:
        size = sum(p.numel() for p in groups[group])
        summary = snr.summarize(stats, slice(start, start + size))
        out.update({f"{group}_{stat}": summary[stat] for stat in GRADIENT_STATS})
        start += size
    return out


# -- active units ----------------------------------------------------------------------------------


def count_active(means: Tensor, threshold: float = 1e-2, mc_var: Tensor | None = None) -> int:
    """The pure core of :func:`active_units`: ``means`` ``[B, U]`` holds ``E_q[z_u | x_b]``; a unit
    is active when its variance over the examples (unbiased), ``Cov_x(E_q[z_u | x])``, exceeds
    ``threshold`` (Burda et al. 2016 sec. 5.2 use 0.01).

    ``mc_var`` (``[U]``, optional): where the means are Monte Carlo averages, the average over the
    examples of each mean's own variance (``Var_q(z_u | x) / n``). It is subtracted, since the
    noise of the averages adds exactly that to their variance over x; the estimate of
    ``Cov_x(E_q[z_u | x])`` is then unbiased.
    """
    if means.shape[0] < 2:
        raise ValueError("active units need at least 2 examples for a covariance over x")
    cov = means.to(torch.promote_types(means.dtype, torch.float32)).var(0)
    if mc_var is not None:
        cov = cov - mc_var.to(cov.dtype)
    return int((cov > threshold).sum())


def _latent_tensors(out) -> list[Tensor]:
    """Every ``[k, B, d]`` tensor in what ``posterior_sample`` returns (the ``[k, B]`` log-densities
    beside them are left out)."""
    if isinstance(out, Tensor):
        return [out] if out.dim() == 3 else []
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _latent_tensors(o)]
    return []


def _sample_moments(z: Tensor) -> tuple[Tensor, Tensor]:
    """``z`` ``[n, B, ...]`` -> (the mean over draws ``[B, U]``, the variance of that mean ``[B, U]``)."""
    z = z.reshape(z.shape[0], z.shape[1], -1)
    return z.mean(0), z.var(0) / z.shape[0]


def _posterior_means(model: nn.Module, x: Tensor, n: int) -> list[tuple[Tensor, Tensor]]:
    """One batch of :func:`posterior_means`, per stochastic layer: ``[(means [B, U_l], variance of
    each mean [B, U_l])]``."""
    B = x.shape[0]
    if callable(getattr(model, "encode", None)):
        q = model.encode(x)
        try:
            m = q.mean.reshape(B, -1)
            return [(m, torch.zeros_like(m))]
        except NotImplementedError:
            return [_sample_moments(q.sample((n,)))]
    if callable(getattr(model, "posterior_sample", None)):
        return [_sample_moments(z) for z in _latent_tensors(model.posterior_sample(x, n))]
    if callable(getattr(model, "log_probs", None)):
        m = model.log_probs(model.variational_params(x)).exp().reshape(B, -1)
        return [(m, torch.zeros_like(m))]
    raise NotImplementedError(
        f"active_units needs E_q[z|x] from variant {getattr(model, 'name', type(model).__name__)!r}: "
        "give it encode(x), posterior_sample(x, k) or (discrete latents) log_probs(params)"
    )


@torch.no_grad()
def posterior_means(
    model: nn.Module, x: Tensor, n_samples: int = 1000, chunk: int = DEFAULT_CHUNK, per_layer: bool = False
):
    """``E_q[z | x]`` for every latent unit, ``[B, U]``, and the Monte Carlo variance of each
    estimate averaged over the examples, ``[U]`` (zero where the mean is exact), by the first
    route the variant offers:

    1. ``model.encode(x)`` (single-latent variants): the distribution's ``mean`` where it has a
       closed form (a diagonal Gaussian: ``mu``); otherwise (a flow's ``TransformedDistribution``)
       the average of ``n_samples`` draws.
    2. ``model.posterior_sample(x, k)`` (multi-level variants: hierarchical, ladder): the average
       of ``n_samples`` draws of every latent level (each ``[k, B, d]`` tensor it returns), the
       levels concatenated (``U = sum d_l``), the level next to ``x`` first.
    3. ``model.log_probs(model.variational_params(x))`` (discrete latents, ``[B, n, c]``): the
       class probabilities, the exact expectation of the one-hot ``z`` (``U = n * c``).

    Otherwise a ``NotImplementedError`` saying what to provide. At most ``chunk`` draws
    (``n_samples`` x examples) are held at once. ``per_layer=True``: a list of such pairs, one per
    stochastic layer, instead of their concatenation.
    """
    x = x.reshape(x.shape[0], -1)
    B = x.shape[0]
    b = max(1, chunk // n_samples)
    # Each layer's outputs ([B, U_l] means and Monte Carlo variances) are allocated once, at the
    # first batch, and every batch copies its rows into them: no per-batch result outlives its
    # pass among the large transient draws of the next (see :func:`log_weight_moments`).
    outs: list[tuple[Tensor, Tensor]] = []
    for i in range(0, B, b):
        parts = _posterior_means(model, x[i : i + b], n_samples)
        if not outs:
            outs = [(m.new_empty(B, *m.shape[1:]), v.new_empty(B, *v.shape[1:])) for m, v in parts]
        for (m_out, v_out), (m, v) in zip(outs, parts):
            m_out[i : i + b].copy_(m)
            v_out[i : i + b].copy_(v)
        del parts
    layers = [(m, v.mean(0)) for m, v in outs]
    if per_layer:
        return layers
    return torch.cat([m for m, _ in layers], -1), torch.cat([v for _, v in layers])


def active_units(
    model: nn.Module, x: Tensor, threshold: float = 1e-2, n_samples: int = 1000, per_layer: bool = False
):
    """The number of active latent units (Burda, Grosse & Salakhutdinov 2016):

        A_u = Cov_x( E_{q(z | x)}[z_u] ) > threshold,

    with ``E_q[z | x]`` from :func:`posterior_means` (exact where the family has a closed-form
    mean; else an average of ``n_samples`` draws, whose own variance is subtracted from the
    covariance, see :func:`count_active`) and the covariance over the examples of ``x``
    (``[B, ...]``, B >= 2). With several stochastic layers all units are counted together, or,
    ``per_layer=True``, a list of counts per layer, the layer next to ``x`` first (Burda et al.
    report 16 + 5 for their two-layer MNIST model). Eval mode.

    With a learned prior over the top latent (``variants.priors``) its units are measured in the
    prior's own scale: ``Cov_x(E_q[z_u | x]) / Var_p(z_u) > threshold``, ``Var_p`` the prior's
    marginal variance (1 under ``N(0, I)``, so the standard prior's count is unchanged). A
    learned prior leaves the scale of ``z`` free (the decoder can absorb it), so an absolute
    threshold would count units by an arbitrary unit of length.
    """
    with evaluating(model):
        layers = posterior_means(model, x, n_samples, per_layer=True)
        var_p = priors.top_variance(model)
    if var_p is not None:  # the top layer is the last (posterior_means: the layer next to x first)
        m, v = layers[-1]
        layers[-1] = (m / var_p.sqrt().to(m), v / var_p.to(v))
    counts = [count_active(m, threshold, v) for m, v in layers]
    return counts if per_layer else sum(counts)


def layers_unsupported(model: nn.Module) -> str | None:
    """Why per-layer active units do not apply to ``model`` (one stochastic layer), or ``None``."""
    if callable(getattr(model, "posterior_sample", None)) and not callable(getattr(model, "encode", None)):
        return None
    return f"{getattr(model, 'name', type(model).__name__)!r} has one stochastic layer"


# -- annealed importance sampling and bidirectional Monte Carlo (bench.ais) ------------------------

ais_log_likelihood = ais.ais_log_likelihood
bdmc = ais.bdmc
ais_unsupported = ais.unsupported


# -- throughput ------------------------------------------------------------------------------------


def time_step(
    fn: Callable[[], object], n_warmup: int = 3, n_iters: int = 10, device: str | torch.device = "cpu"
) -> float:
    """Seconds per call of ``fn()``, averaged over ``n_iters`` calls after ``n_warmup`` untimed ones
    (allocator, kernel selection, caches).

    On CUDA the interval is measured with CUDA events recorded on the current stream around the
    loop, after a synchronize (as cifar10-airbench does): kernels are asynchronous, so wall-clock
    time without a sync measures the launch, not the work. On CPU: ``time.perf_counter``.
    """
    device = torch.device(device)
    for _ in range(n_warmup):
        fn()
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n_iters):
                fn()
            end.record()
            end.synchronize()
        return start.elapsed_time(end) / 1e3 / n_iters
    t0 = time.perf_counter()
    for _ in range(n_iters):
        fn()
    return (time.perf_counter() - t0) / n_iters


def reset_peak_memory(device: str | torch.device = "cpu") -> None:
    """Start a new peak-memory window. CUDA: ``torch.cuda.reset_peak_memory_stats``. CPU (Linux):
    writing ``5`` to ``/proc/self/clear_refs`` resets the process's ``VmHWM`` (peak RSS); elsewhere
    the CPU peak cannot be reset and stays the process's lifetime peak."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _vm_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_memory_mb(device: str | torch.device = "cpu") -> float:
    """Peak memory in MiB since the last :func:`reset_peak_memory`. CUDA:
    ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the peak resident set size of the
    *whole process* (``VmHWM`` on Linux, which :func:`reset_peak_memory` resets; otherwise
    ``resource.getrusage``'s lifetime peak): it includes Python, torch and everything loaded.
    ``bench.train.run`` resets the mark at the run's start and reads it at its end
    (``perf/peak_mem_mb``: the run's own peak). The evaluations keep their outputs preallocated and
    their accumulators in place, so the process's peak RSS is that of its largest pass, not of the
    allocator's history (a per-pass list grew glibc's heap 2.75 MB a pass: 9.4 GB after 3,000
    jang2017 L_1000 images; flat at 1.1 GB over 10,000 now)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _vm_hwm_kib()
    if hwm is not None:
        return hwm / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
