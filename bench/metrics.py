"""The measurements: pure functions of (model, data), no logging inside, device-agnostic.

Shapes: ``x`` is ``[B, *x_shape]`` (or flat ``[B, D]``); ``model.log_weights(x, k, params)`` is
``[k, B]`` with ``log w_j = log p(x, z_j) - log q(z_j | x)``, ``z_j ~ q(. | x)``.

* :func:`gradient_stats`   variance and signal-to-noise ratio of gradient estimators (Rainforth et al. 2018).

Every function runs on the device and dtype of its inputs and of the model's parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench import objectives

# -- gradient variance and SNR -------------------------------------------------------------------

_GROUPS = ("encoder", "decoder")


class _Welford:
    """Streaming per-coordinate mean and variance (Welford 1962), float64.

    ``m2`` stays exactly 0 for a coordinate whose draws are all bit-identical (``delta == 0`` at
    every update), so a deterministic gradient is recognized exactly rather than as rounding noise
    of ``E[g^2] - E[g]^2``.
    """

    def __init__(self, numel: int, device: torch.device) -> None:
        self.n = 0
        self.mean = torch.zeros(numel, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(numel, dtype=torch.float64, device=device)
        self.nonzero = torch.zeros(numel, dtype=torch.bool, device=device)

    def update(self, g: Tensor) -> None:
        g = g.to(torch.float64)
        self.n += 1
        delta = g - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (g - self.mean)
        self.nonzero |= g != 0


def summarize_gradients(mean: Tensor, var: Tensor, nonzero: Tensor) -> tuple[float, float]:
    """The pure core of :func:`gradient_stats`: per-coordinate moments -> ``(mean var, mean SNR)``.

    ``mean``, ``var`` (unbiased, over draws) and ``nonzero`` (some draw was nonzero) are ``[P]``.

    * Coordinates whose gradient is identically zero in every draw (unused parameters, a group the
      objective does not reach) carry no information about the estimator and are left out of both
      averages.
    * Variance: the mean of ``var`` over the remaining (live) coordinates.
    * SNR: ``|mean| / std`` averaged over the live coordinates with ``std > 0``. A live coordinate
      with ``std == 0`` is deterministic (infinite SNR); it is left out of the average so that one
      such coordinate does not turn the group's SNR into ``inf``. If *every* live coordinate is
      deterministic, the SNR is ``inf``.
    * A group with no live coordinate at all (no gradient reaches it) reports variance ``0.0`` and
      SNR ``0.0`` ("no signal"), never NaN.
    """
    live = nonzero
    if not bool(live.any()):
        return 0.0, 0.0
    v = var[live]
    mean_var = float(v.mean())
    std = v.sqrt()
    stochastic = std > 0
    if not bool(stochastic.any()):
        return mean_var, math.inf
    snr = mean[live][stochastic].abs() / std[stochastic]
    return mean_var, float(snr.mean())


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
    Per parameter coordinate ``c``: ``mean_c = (1/n) sum_i g_ic`` and the unbiased variance
    ``var_c``; then per group of ``model.parameter_groups()`` (``encoder``, ``decoder``):

        {group}_var = mean_c var_c,     {group}_snr = mean_c |mean_c| / sqrt(var_c)

    (Rainforth et al. 2018, "Tighter variational bounds are not necessarily better"), over the live
    coordinates as :func:`summarize_gradients` defines them (identically zero coordinates are left
    out; a deterministic gradient gives ``inf``, never NaN).

    The surrogate is a mean over the batch, so for i.i.d. examples the variance falls as ``1/B``.
    ``objective`` is a registered name (a fresh instance from ``bench.objectives.build``) or such a
    callable ``(model, x, k, params=None) -> Estimate``. Gradients are taken with
    ``torch.autograd.grad``: the parameters' ``.grad`` are untouched, and the model's buffers
    (running statistics a forward pass in training mode may update) are restored afterwards.
    Returns ``{"encoder_var", "encoder_snr", "decoder_var", "decoder_snr"}`` as floats.
    """
    if n < 2:
        raise ValueError(f"gradient_stats needs n >= 2 draws for a variance, got {n}")
    if isinstance(objective, str):
        objectives.check_applies(objective, type(model))
        objective = objectives.build(objective)
    all_groups = model.parameter_groups()
    groups = {g: [p for p in all_groups.get(g, []) if p.requires_grad] for g in _GROUPS}
    params = [p for g in _GROUPS for p in groups[g]]
    device = params[0].device if params else x.device
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    stats = _Welford(sum(p.numel() for p in params), device)
    try:
        for _ in range(n):
            surrogate = objective(model, x, k).surrogate
            grads = torch.autograd.grad(surrogate, params, allow_unused=True)
            stats.update(
                torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                           for p, g in zip(params, grads)])
            )
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    var = stats.m2 / (stats.n - 1)
    out: dict[str, float] = {}
    start = 0
    for group in _GROUPS:
        size = sum(p.numel() for p in groups[group])
        sl = slice(start, start + size)
        out[f"{group}_var"], out[f"{group}_snr"] = summarize_gradients(
            stats.mean[sl], var[sl], stats.nonzero[sl]
        )
        start += size
    return out
