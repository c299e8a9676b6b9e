"""Gradient estimators against known answers, and the literature's variance / SNR results.

Exact gradients:

* ``linear-gaussian`` (pPCA, q diagonal Gaussian) has a closed-form ELBO (derived in
  :func:`exact_elbo`); autograd through it gives the exact ELBO gradient.
* The Gumbel-softmax variant with 2 variables x 3 classes has 9 codes: the discrete ELBO and the
  k-sample IWAE bound (9^k tuples) are exact finite sums, differentiable by autograd.

Unbiasedness test: ``n = 50`` gradient draws, each the average of ``REPS`` independent draws (the
batch repeated ``REPS`` times, which the surrogate averages), so every draw is close to Gaussian.
Per coordinate ``t = (mean - exact) / SE`` with ``SE = std / sqrt(n)``; the test asks
``max |t| < 5`` over all coordinates (~20-200 of them): for an unbiased estimator the chance of
one ``|t_49| > 5`` among 200 is about 0.2% (Bonferroni), and seeds are fixed. Power is shown by
the biased estimators, which the same statistic puts tens to hundreds of SE off.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

import variants
from bench import objectives
from bench.metrics import gradient_stats
from bench.objectives.basic import logmeanexp

N_DRAWS, REPS, MAX_T = 50, 500, 5.0


# -- helpers ----------------------------------------------------------------------------------------
def flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def mean_gradient_draws(model, x, name, k, n=N_DRAWS, reps=REPS):
    """``[n, P]``: each row the gradient of ``name``'s surrogate on ``x`` repeated ``reps`` times."""
    objective = objectives.build(name)
    params = list(model.parameters())
    xr = x.repeat(reps, 1)
    return torch.stack([flat_grad(objective(model, xr, k).surrogate, params) for _ in range(n)])


def t_scores(draws, exact):
    """``|mean - exact| / SE`` per coordinate; coordinates that are exactly zero in every draw
    and in ``exact`` (a pixel that is 0 in the whole batch) give 0, not 0/0."""
    se = draws.std(0) / math.sqrt(draws.shape[0])
    return (draws.mean(0) - exact).abs() / (se**2 + 1e-30).sqrt()


def linear_gaussian(seed=0):
    """pPCA with D = 3, d = 2 and a q that is *not* the posterior (so no gradient vanishes)."""
    torch.manual_seed(seed)
    model = variants.build("linear-gaussian", x_shape=(3,), latent_dim=2).double()
    with torch.no_grad():
        model.encoder.mean.weight.normal_(0, 0.5)
        model.encoder.mean.bias.normal_(0, 0.3)
        model.encoder.log_sigma.fill_(-0.7)
        model.decoder.log_sigma.fill_(-0.3)
        model.decoder.b.normal_()
    return model, 1.5 * torch.randn(4, 3, dtype=torch.double)


def exact_elbo(model, x, lam):
    """Closed-form ELBO of pPCA for ``q = N(mu, diag s^2)``, ``lam = [mu, log s]``: ``[B]``.

        E_q log p(x | z) = -D/2 log(2 pi sigma^2)
                           - (||x - W mu - b||^2 + sum_i s_i^2 ||W_{:, i}||^2) / (2 sigma^2)
        KL(q || N(0, I)) = 1/2 sum_i (s_i^2 + mu_i^2 - 1 - 2 log s_i)

    (using E||x - W z - b||^2 = ||x - W mu - b||^2 + tr(W diag(s^2) W^T)).
    """
    mu, log_s = lam.chunk(2, -1)
    s2 = (2 * log_s).exp()
    W, b = model.decoder.W, model.decoder.b
    sigma2 = (2 * model.decoder.log_sigma).exp()
    resid = x - mu @ W.T - b
    e_log_lik = -0.5 * x.shape[-1] * torch.log(2 * math.pi * sigma2) - (
        (resid**2).sum(-1) + (s2 * (W**2).sum(0)).sum(-1)
    ) / (2 * sigma2)
    return e_log_lik - 0.5 * (s2 + mu**2 - 1 - 2 * log_s).sum(-1)


def tiny_categorical(seed=0):
    torch.manual_seed(seed)
    model = variants.build(
        "gumbel-softmax", x_shape=(5,), hidden=(8,), n_latent=2, n_classes=3
    ).double()
    return model, (torch.rand(3, 5) > 0.5).double()


def exact_discrete_bound(model, x, k):
    """The k-sample bound ``E[logmeanexp_j log w(z_j)]`` of the categorical model by enumeration
    over all ``9^k`` tuples (``k = 1``: the ELBO), ``[B]``, differentiable in every parameter."""
    idx = torch.tensor(list(itertools.product(range(model.n_classes), repeat=model.n_latent)))
    codes = F.one_hot(idx, model.n_classes).double()  # [M, n, c]
    log_pi = model.log_probs(model.variational_params(x))  # [B, n, c]
    log_q = torch.einsum("mnc,bnc->mb", codes, log_pi)  # [M, B]
    log_pz = -model.n_latent * math.log(model.n_classes)
    log_w = model.decoder(codes.flatten(-2).unsqueeze(1)).log_prob(x) + log_pz - log_q
    tuples = torch.tensor(list(itertools.product(range(codes.shape[0]), repeat=k)))  # [M^k, k]
    return (log_q[tuples].sum(1).exp() * logmeanexp(log_w[tuples], 1)).sum(0)


# -- continuous: unbiasedness on the pPCA oracle ----------------------------------------------------
def test_closed_form_elbo_matches_the_sampled_elbo():
    model, x = linear_gaussian()
    torch.manual_seed(1)
    with torch.no_grad():
        exact = exact_elbo(model, x, model.variational_params(x))
        n = 20_000
        log_w = model.log_weights(x, n)
    se = log_w.std(0) / math.sqrt(n)
    assert ((log_w.mean(0) - exact).abs() < 4 * se).all()  # 4 standard errors


@pytest.mark.parametrize(
    "name,k", [("elbo", 1), ("stl", 1), ("stl", 3), ("score-function", 1), ("score-function", 4)]
)
def test_unbiased_for_the_exact_elbo_gradient(name, k):
    model, x = linear_gaussian()
    exact = flat_grad(-exact_elbo(model, x, model.variational_params(x)).mean(), list(model.parameters()))
    torch.manual_seed(2)
    t = t_scores(mean_gradient_draws(model, x, name, k), exact)
    assert t.max() < MAX_T, (name, k, t.max())


def test_the_check_detects_a_different_gradient():
    """Power: the IWAE gradient (k = 4) estimates the gradient of another bound, not the ELBO's."""
    model, x = linear_gaussian()
    exact = flat_grad(-exact_elbo(model, x, model.variational_params(x)).mean(), list(model.parameters()))
    torch.manual_seed(2)
    assert t_scores(mean_gradient_draws(model, x, "iwae", 4), exact).max() > 50


@pytest.mark.parametrize("k", [4, 16])
def test_dreg_and_iwae_agree_in_expectation(k):
    model, x = linear_gaussian()
    torch.manual_seed(3)
    a = mean_gradient_draws(model, x, "iwae", k)
    b = mean_gradient_draws(model, x, "dreg", k)
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() / se).max() < MAX_T


def test_dreg_routes_squared_weights_to_the_encoder_and_weights_to_the_decoder():
    """Known answer with the same noise: encoder grad = -sum_j w~_j^2 d log w_j / d phi (through z),
    decoder grad = -sum_j w~_j d log w_j / d theta; and with k = 1 DReG is STL."""
    torch.manual_seed(0)
    model = variants.build("vanilla", x_shape=(6,), latent_dim=2, hidden=(5,)).double()
    x = (torch.rand(3, 6) > 0.5).double()
    groups = model.parameter_groups()
    enc, dec = groups["encoder"], groups["decoder"]
    k = 4
    torch.manual_seed(1)
    got = torch.autograd.grad(objectives.build("dreg")(model, x, k).surrogate, enc + dec)
    torch.manual_seed(1)  # the same draws: k copies of the batch, one sample each, stop-q
    lam = model.variational_params(x)
    log_w = model.terms(x.repeat(k, 1), 1, params=lam.repeat(k, 1), mode="stop-q").log_w.reshape(k, 3)
    w = torch.softmax(log_w.detach(), 0)
    want = torch.autograd.grad(-(w**2 * log_w).sum(0).mean(), enc, retain_graph=True)
    want += torch.autograd.grad(-(w * log_w).sum(0).mean(), dec)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)
    assert (w - 0.25).abs().max() > 0.05  # the weights are far from uniform: w~ vs w~^2 matters
    torch.manual_seed(5)
    g_dreg = torch.autograd.grad(objectives.build("dreg")(model, x, 1).surrogate, enc + dec)
    torch.manual_seed(5)
    g_stl = torch.autograd.grad(objectives.build("stl")(model, x, 1).surrogate, enc + dec)
    for g, h in zip(g_dreg, g_stl):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


# -- discrete: unbiasedness on an enumerable latent space -------------------------------------------
@pytest.mark.parametrize("name,k,bound_k", [("reinforce", 1, 1), ("reinforce", 3, 1), ("vimco", 2, 2), ("vimco", 3, 3)])
def test_discrete_score_estimators_match_the_exact_gradient(name, k, bound_k):
    """reinforce is unbiased for the discrete ELBO, vimco for the k-sample bound L_k."""
    model, x = tiny_categorical()
    exact = flat_grad(-exact_discrete_bound(model, x, bound_k).mean(), list(model.parameters()))
    torch.manual_seed(4)
    t = t_scores(mean_gradient_draws(model, x, name, k), exact)
    assert t.max() < MAX_T, (name, k, t.max())


def test_vimco_value_is_the_k_sample_bound():
    model, x = tiny_categorical()
    torch.manual_seed(6)
    with torch.no_grad():
        exact = exact_discrete_bound(model, x, 3)
        vals = objectives.build("vimco")(model, x.repeat(4000, 1), 3).value.reshape(4000, -1)
    assert ((vals.mean(0) - exact).abs() < 4 * vals.std(0) / math.sqrt(4000)).all()  # 4 SE


def test_relaxed_estimators_are_biased_and_the_bias_shrinks_with_the_temperature():
    """Gumbel-softmax estimates the gradient of the *relaxed* objective E_g[log p(x | y)] - KL,
    y = softmax((log pi + g) / tau), not of the discrete ELBO: at tau = 1 its mean is hundreds of
    SE off the exact gradient (measured ~230; threshold 20), and so is straight-through's. As
    tau -> 0 the relaxed sample approaches the one-hot one and the bias shrinks (measured
    relative bias 0.027 at tau = 1, 0.010 at tau = 0.3; the test asks for a factor 2)."""
    model, x = tiny_categorical()
    exact = flat_grad(-exact_discrete_bound(model, x, 1).mean(), list(model.parameters()))
    bias = {}
    for tau in (1.0, 0.3):
        model.tau.fill_(tau)
        torch.manual_seed(7)
        draws = mean_gradient_draws(model, x, "gumbel-softmax", 1)
        bias[tau] = float((draws.mean(0) - exact).norm())
        if tau == 1.0:
            assert t_scores(draws, exact).max() > 20
            torch.manual_seed(7)
            assert t_scores(mean_gradient_draws(model, x, "st-gumbel", 1), exact).max() > 20
    assert bias[0.3] < bias[1.0] / 2, bias


# -- the literature's qualitative results, fixed seeds ----------------------------------------------
def test_score_function_variance_far_above_the_reparameterized_one():
    """Encoder-gradient variance of REINFORCE (leave-one-out baseline) vs the pathwise ELBO
    gradient on a vanilla VAE at initialization, 16 binarized 8x8 digits, 100 draws each: measured
    ratio ~58 (threshold 10). The decoder gradient is the same estimator in both (ratio ~1)."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:16] > 7, dtype=torch.float32)
    torch.manual_seed(0)
    model = variants.build("vanilla", x_shape=(64,), latent_dim=4, hidden=(32,))
    torch.manual_seed(1)
    sf = gradient_stats(model, x, "score-function", n=100, k=1)
    el = gradient_stats(model, x, "elbo", n=100, k=1)
    assert sf["encoder_var"] > 10 * el["encoder_var"]
    # same distribution of decoder gradients: 100 draws, averaged over ~2,000 coordinates
    assert 0.8 < sf["decoder_var"] / el["decoder_var"] < 1.25


def rainforth_toy(d=5, noise=0.01, seed=0):
    """Rainforth et al. (2018) sec. 4: p(z) = N(0, I), p(x | z) = N(z, I), so p(z | x) =
    N(x / 2, I / 2); q(z | x) = N(A x + c, 2/3 I) with (A, c) = (I / 2, 0) + N(0, noise^2)."""
    torch.manual_seed(seed)
    model = variants.build("linear-gaussian", x_shape=(d,), latent_dim=d).double()
    with torch.no_grad():
        model.decoder.W.copy_(torch.eye(d))
        model.decoder.b.zero_()
        model.decoder.log_sigma.zero_()
        model.encoder.mean.weight.copy_(0.5 * torch.eye(d) + noise * torch.randn(d, d))
        model.encoder.mean.bias.copy_(noise * torch.randn(d))
        model.encoder.log_sigma.fill_(0.5 * math.log(2 / 3))
    return model, math.sqrt(2) * torch.randn(8, d, dtype=torch.double)


def test_iwae_encoder_snr_falls_with_k_while_dregs_rises():
    """Rainforth et al. 2018 (IWAE inference SNR ~ 1/sqrt(k), generative ~ sqrt(k)) and Tucker et
    al. 2019 (DReG inference SNR grows with k), on their toy model near the optimum. Measured
    (200 draws; the headline is the median over the 35 encoder coordinates): iwae encoder SNR
    0.051, 0.055, 0.033, 0.002 (its squared-SNR ratio of averages 0.030, 0.0062, 0.0002, -0.0015)
    and dreg 0.20, 0.25, 0.53, 1.09 for k = 1, 4, 16, 64; the test asks for monotone trends (for
    IWAE's encoder, whose median sits within noise of 0 up to k = 16, of the ratio of averages) and
    a factor 2 between k = 1 and 64."""
    model, x = rainforth_toy()
    snr = {}
    for name in ("iwae", "dreg"):
        torch.manual_seed(1)
        snr[name] = [gradient_stats(model, x, name, n=200, k=k) for k in (1, 4, 16, 64)]
    enc = {n: [s["encoder_snr"] for s in v] for n, v in snr.items()}
    dec = {n: [s["decoder_snr"] for s in v] for n, v in snr.items()}
    ratio = [s["encoder_snr_ratio"] for s in snr["iwae"]]
    assert ratio == sorted(ratio, reverse=True) and enc["iwae"][-1] < enc["iwae"][0] / 2
    assert enc["dreg"] == sorted(enc["dreg"]) and enc["dreg"][-1] > 2 * enc["dreg"][0]
    assert dec["iwae"] == sorted(dec["iwae"]) and dec["iwae"][-1] > 2 * dec["iwae"][0]
