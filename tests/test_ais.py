"""Annealed importance sampling and BDMC (``bench.ais``): known answers on the pPCA oracle, the
comparison with IWAE on a trained nonlinear model, and the joint-latent contract of the variants.

Every stochastic test fixes its seed; each tolerance is stated beside it with its reason.
"""

from __future__ import annotations

import math

import pytest
import torch

import variants
from bench import ais, metrics, passes
from tests.test_metrics import gap_oracle


def chain_se(log_w: torch.Tensor) -> torch.Tensor:
    """Per-example s.e. of logmeanexp over the chains (delta method: sd(w / mean w) / sqrt(C))."""
    rel = torch.exp(log_w - torch.logsumexp(log_w, 0, keepdim=True)) * log_w.shape[0]
    return (rel.var(0) / log_w.shape[0]).sqrt()


def test_ais_reaches_the_exact_log_likelihood_on_the_oracle():
    """pPCA with a correlated posterior, 20 points, 16 chains, 200 steps. The estimate's error per
    example is ~ N(-se^2/2, se^2) with se from the chains' own spread (measured 0.12 on average);
    the tolerance is 5 se + se^2 + 0.01 per example and, for the batch mean, 4 sqrt(mean se^2 / B)
    + mean se^2 + 0.005 (measured: mean error -0.016, largest 0.25; importance sampling from the prior, T = 1, is off
    by -0.27 with as many chains)."""
    model, x, _, _ = gap_oracle(correlated=True, B=20)
    exact = model.exact_log_marginal(x).detach()
    torch.manual_seed(31)
    with passes.evaluating(model):
        log_w, steps = ais.forward_chains(model, x, ais.Settings(n_chains=16, n_steps=200))
    est, se = ais._log_mean_exp(log_w), chain_se(log_w)
    err = est - exact
    assert bool((err.abs() < 5 * se + se**2 + 0.01).all()), (err, se)
    assert abs(err.mean().item()) < 4 * (se.pow(2).mean() / len(x)).sqrt().item() + se.pow(2).mean().item() + 0.005
    assert steps.shape == (199, 20) and bool(((steps >= ais.STEP_MIN) & (steps <= ais.STEP_MAX)).all())
    # the public function is the same computation
    torch.manual_seed(31)
    torch.testing.assert_close(metrics.ais_log_likelihood(model, x, n_chains=16, n_steps=200), est)
    # power: without annealing (T = 1: importance sampling from the prior) the error is large
    torch.manual_seed(32)
    crude = metrics.ais_log_likelihood(model, x, n_chains=16, n_steps=1)
    assert (crude - exact).mean().item() < -0.2  # measured -0.27


def test_bdmc_brackets_the_exact_log_likelihood_on_the_oracle():
    """Forward AIS (a stochastic lower bound) and reverse AIS from the exact latent (a stochastic
    upper bound) on 30 points simulated from the oracle: the batch means bracket the exact mean
    within 4 s.e. of each side (the forward s.e. from its chains; measured: lower -0.007, upper
    +0.015 from exact), and the bracket is narrow (mean gap < 0.1; measured 0.022)."""
    model, _, _, _ = gap_oracle(correlated=True, B=1)
    torch.manual_seed(33)
    with torch.no_grad():
        z = model.sample_prior(30)
        x = model.decode(z).sample()
    exact = model.exact_log_marginal(x).detach()
    torch.manual_seed(34)
    lower, upper = metrics.bdmc(model, 30, n_chains=16, n_steps=200, data=(z, x))
    assert lower.shape == upper.shape == (30,)
    with passes.evaluating(model):
        torch.manual_seed(34)
        log_w, _ = ais.forward_chains(model, x, ais.Settings(n_chains=16, n_steps=200))
    se = (chain_se(log_w).pow(2).mean() / 30).sqrt().item()
    assert lower.mean().item() < exact.mean().item() + 4 * se + 1e-3
    assert upper.mean().item() > exact.mean().item() - 4 * se - 1e-3
    assert 0 < (upper - lower).mean().item() < 0.1
    with pytest.raises(ValueError, match="n = 30"):
        metrics.bdmc(model, 30, data=(z[:5], x[:5]))


def trained_vanilla():
    """A nonlinear VAE trained for 30 epochs on the binarized 8x8 digits (about 2 s)."""
    from sklearn.datasets import load_digits

    g = torch.Generator().manual_seed(35)
    data = torch.tensor(load_digits().data / 16, dtype=torch.float32)
    train, test = data[:1500], torch.bernoulli(data[1500:1520], generator=g)
    torch.manual_seed(36)
    model = variants.build("vanilla", x_shape=(64,), latent_dim=4, hidden=(48,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        xb_all = torch.bernoulli(train, generator=g)
        for i in range(0, 1500, 100):
            loss = -model.log_weights(xb_all[i : i + 100], 1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, test


def test_ais_is_not_below_iwae_with_the_same_budget():
    """On a trained nonlinear model AIS (16 + 4 chains, 100 steps, 10 leapfrog steps: 22,000
    decoder evaluations per example, gradients not counted) is not below IWAE with as many
    samples, beyond 3 s.e. of the difference (AIS's s.e. from its chains, IWAE's from its
    weights). Measured: AIS - IWAE = -0.008 nats (this small model's IWAE is nearly tight).
    Power: AIS with one step (importance sampling from the prior, 20 chains) is far below (-0.97
    nats): the comparison can fail."""
    model, x = trained_vanilla()
    C, T, P, L = 16, 100, 4, 10
    budget = (C + P) * (T + (T - 1) * (L + 1))
    torch.manual_seed(37)
    with passes.evaluating(model):
        log_w, _ = ais.forward_chains(model, x, ais.Settings(n_chains=C, n_steps=T, leapfrog=L, pilot_chains=P))
        a, se_a = ais._log_mean_exp(log_w), chain_se(log_w)
        with torch.no_grad():
            lw = torch.cat([model.log_weights(x, 5000) for _ in range(math.ceil(budget / 5000))])[:budget]
    iwae = torch.logsumexp(lw, 0) - math.log(budget)
    se_i = chain_se(lw)
    diff = (a - iwae).mean().item()
    se = ((se_a**2 + se_i**2).mean() / len(x)).sqrt().item()
    assert diff > -3 * se, (diff, se)
    torch.manual_seed(38)
    crude = metrics.ais_log_likelihood(model, x, n_chains=20, n_steps=1)
    assert (crude - iwae).mean().item() < -0.5  # measured -0.97


def test_ais_applies_to_continuous_latents_only():
    """Never NaN for a variant it does not apply to: the reason instead."""
    gumbel = variants.build("gumbel-softmax", x_shape=(8,), hidden=(8,), n_latent=2, n_classes=3)
    reason = metrics.ais_unsupported(gumbel)
    assert reason and "discrete" in reason
    with pytest.raises(NotImplementedError, match="discrete"):
        metrics.ais_log_likelihood(gumbel, torch.zeros(2, 8))
    for name in ("vanilla", "iwae", "planar-flow", "iaf", "hierarchical", "ladder", "linear-gaussian"):
        lik = "gaussian" if name == "linear-gaussian" else "bernoulli"
        assert metrics.ais_unsupported(variants.build(name, x_shape=(8,), hidden=(8,), likelihood=lik)) is None


@pytest.mark.parametrize("name", ["hierarchical", "ladder"])
def test_joint_latent_contract_of_the_two_level_variants(name):
    """log_prior and decode over the flat latent [z1, z2] agree with terms() on the draws of
    posterior_sample, and sample_prior draws what sample() draws (same seed, same order)."""
    torch.manual_seed(39)
    model = variants.build(name, x_shape=(10,), latent_dim=3, hidden=(12,)).double()
    x = (torch.rand(4, 10) > 0.5).double()
    torch.manual_seed(40)
    zs, log_pz, _ = model.posterior_sample(x, 5)
    z = torch.cat(zs, -1)
    torch.manual_seed(40)
    t = model.terms(x, 5)
    torch.testing.assert_close(model.log_prior(z), log_pz, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.decode(z).log_prob(x), t.log_px_z, rtol=0, atol=1e-12)
    torch.manual_seed(41)
    means = model.decode(model.sample_prior(6)).mean
    torch.manual_seed(41)
    torch.testing.assert_close(means, model.sample(6, mean=True).reshape(6, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["hierarchical", "ladder"])
def test_ais_on_the_joint_latent_of_two_level_variants_matches_quadrature(name):
    """Two stochastic layers of one unit each: log p(x) = log int int p(x | z1) p(z1 | z2) p(z2)
    dz1 dz2 by an 801 x 801 grid over [-8, 8]^2 (the same to 1e-9 as with 1601 points: these
    integrands are smooth on the 0.02 grid) is the known answer; AIS over the joint latent, 16
    chains and 100 steps, is within 5 s.e. (its
    chains') + 0.01 of it per example (measured errors within 0.014). An AIS over z1 alone, or with a
    wrong log_prior, would miss by the prior's whole contribution."""
    torch.manual_seed(42)
    opts = {"latent_dim2": 1} if name == "hierarchical" else {"upper_latent_dims": (1,)}
    model = variants.build(name, x_shape=(10,), latent_dim=1, hidden=(12,), **opts).double()
    x = (torch.rand(5, 10) > 0.5).double()
    g = torch.linspace(-8, 8, 801, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 2)  # [G^2, 1, 2]
    with torch.no_grad(), passes.evaluating(model):  # eval mode: the ladder's batch norm is a fixed map
        log_f = model.log_prior(z) + model.decode(z).log_prob(x)  # [G^2, B]
    exact = torch.logsumexp(log_f, 0) + 2 * math.log(g[1] - g[0])
    torch.manual_seed(43)
    with passes.evaluating(model):
        log_w, _ = ais.forward_chains(model, x, ais.Settings(n_chains=16, n_steps=100))
    err = ais._log_mean_exp(log_w) - exact
    assert bool((err.abs() < 5 * chain_se(log_w) + 0.01).all()), (err, chain_se(log_w))
