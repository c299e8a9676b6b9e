"""Oracle tests of ``bench.metrics``: known answers on the linear-Gaussian model (pPCA), where
``log p(x)``, the posterior and the best diagonal Gaussian are exact.

Every stochastic test fixes its seed; each tolerance is stated next to it with its reason.
"""

from __future__ import annotations

import math

import pytest
import torch

import variants
from bench import metrics
from bench.objectives import Estimate


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def linear_gaussian(D: int = 6, d: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return variants.build("linear-gaussian", x_shape=(D,), latent_dim=d)


# -- gradient_stats --------------------------------------------------------------------------------


def test_summarize_gradients_known_answer():
    # coordinate 2 is identically zero (left out), coordinate 3 deterministic (var 0, in the
    # variance average, out of the SNR average): var = (4 + 1 + 0) / 3, snr = (1/2 + 2/1) / 2.
    mean = torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=torch.float64)
    var = torch.tensor([4.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    nonzero = torch.tensor([True, True, False, True])
    v, snr = metrics.summarize_gradients(mean, var, nonzero)
    assert v == pytest.approx(5 / 3)
    assert snr == pytest.approx(1.25)
    # all live coordinates deterministic -> inf; nothing live -> 0.0 ("no signal"), never NaN
    assert metrics.summarize_gradients(mean[3:], var[3:], nonzero[3:]) == (0.0, math.inf)
    assert metrics.summarize_gradients(mean[2:3], var[2:3], nonzero[2:3]) == (0.0, 0.0)


def test_gradient_variance_falls_as_one_over_batch():
    """The surrogate is a batch mean; repeating the batch r times keeps the examples and makes the
    r copies' noise independent, so every coordinate's variance is exactly divided by r in
    expectation. With n = 300 draws a variance estimate has relative s.d. <= sqrt(2/299) = 8%
    (one dominant coordinate, Gaussian draws), a ratio of two <= 12%; 25% is > 2 s.d. in the worst
    case and far from the alternatives 1/sqrt(r) (ratio 2 at r=4) and no decay (1)."""
    model = linear_gaussian(seed=1)
    x = torch.randn(8, 6)
    torch.manual_seed(2)
    base = metrics.gradient_stats(model, x, "elbo", n=300)
    for r in (4, 16):
        big = metrics.gradient_stats(model, x.repeat(r, 1), "elbo", n=300)
        for group in ("encoder", "decoder"):
            ratio = base[f"{group}_var"] / big[f"{group}_var"]
            assert ratio == pytest.approx(r, rel=0.25), (group, r, ratio)


def kl_only(model, x, k=1, params=None):
    """A deterministic objective: the closed-form KL(q(z|x) || p(z)) reaches only the encoder."""
    kl = model.terms(x, k, params=params, mode="reparam").kl
    return Estimate(value=-kl.detach(), surrogate=kl.mean())


def test_deterministic_gradient_has_infinite_snr_not_nan():
    model = linear_gaussian()
    x = torch.randn(16, 6)
    stats = metrics.gradient_stats(model, x, kl_only, n=5)
    assert stats["encoder_var"] == 0.0 and stats["encoder_snr"] == math.inf
    # the decoder gets no gradient at all: "no signal", finite, not NaN
    assert stats["decoder_var"] == 0.0 and stats["decoder_snr"] == 0.0


def test_gradient_stats_leaves_grads_and_buffers_alone():
    model = variants.build("vanilla", x_shape=(1, 8, 8), latent_dim=4, hidden=(16,))
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    x = (torch.rand(10, 1, 8, 8) > 0.5).float()
    stats = metrics.gradient_stats(model, x, "iwae", n=4, k=3)
    assert set(stats) == {"encoder_var", "encoder_snr", "decoder_var", "decoder_snr"}
    assert all(math.isfinite(v) and v > 0 for v in stats.values())
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
