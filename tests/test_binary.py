"""Binary latents: the Bernoulli variant against brute-force enumeration, every discrete estimator
that applies to it against the exact ELBO gradient, the variance orderings the papers report, and
the contract of trainable estimators (NVIL, REBAR, RELAX).

Exact answers: with ``n = 3`` binary units there are 8 codes, so the ELBO
``sum_b q(b | x) [log p(x, b) - log q(b | x)]`` is a finite sum that autograd differentiates in
every parameter (encoder, decoder, prior logits). The unbiasedness statistic is that of
``tests/test_estimators.py``: ``n = 50`` draws, each the average of ``REPS = 500`` (the batch
repeated), per coordinate ``t = (mean - exact) / SE``, ``max |t| < 5`` over the ~150 coordinates
(about 0.1% false-alarm chance for an unbiased estimator, Bonferroni; fixed seeds). Power: a
deliberately biased DisARM (its ``sigmoid(|l|)`` factor dropped) and the relaxed estimators are
tens of SE off with the same statistic.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats
from torch import nn

import variants
from bench import objectives
from bench.metrics import GRADIENT_STATS, gradient_stats
from bench.objectives.binary import _antithetic
from tests.test_estimators import MAX_T, flat_grad, t_scores

N_DRAWS, REPS = 50, 500


def tiny(seed: int = 0, **options):
    """A 5-pixel, 3-unit Bernoulli VAE in float64 with a non-uniform prior (every parameter live)."""
    torch.manual_seed(seed)
    model = variants.build("bernoulli", x_shape=(5,), latent_dim=3, hidden=(8,), **options).double()
    with torch.no_grad():
        model.prior_logits.normal_(0, 0.5)
    return model, (torch.rand(3, 5) > 0.5).double()


def codes(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.double)  # [2^n, n]


def exact_elbo(model, x) -> torch.Tensor:
    """``sum_b q(b | x) log w(b)`` by enumeration, ``[B]``, differentiable."""
    t = model.binary_terms(x, codes(model.latent_dim).unsqueeze(1))  # [M, B]
    return (t.log_qz.exp() * t.log_w).sum(0)


def draws(model, x, objective, k, n=N_DRAWS, reps=REPS):
    """``[n, P]`` gradient draws of ``objective`` (a name or an instance) on ``x`` repeated ``reps``
    times; a trainable objective's parameters are not among ``P`` (they are not the estimator)."""
    if isinstance(objective, str):
        objective = objectives.build(objective)
    if isinstance(objective, nn.Module):
        objective.double()
    params = list(model.parameters())
    xr = x.repeat(reps, 1)
    out = []
    for _ in range(n):
        g, _ = objectives.gradients(objective, objective(model, xr, k), params, model.parameter_groups()["encoder"])
        out.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1) for p, gi in zip(params, g)]))
    return torch.stack(out)


def exact_gradient(model, x):
    return flat_grad(-exact_elbo(model, x).mean(), list(model.parameters()))


# -- the variant ----------------------------------------------------------------------------------
def test_registered_with_its_declarations():
    cls = variants.get("bernoulli")
    assert cls.latent == "discrete" and cls.eval_mode == "score"
    assert set(cls.modes) == {"score", "relaxed", "straight-through"}
    assert set(objectives.applicable(cls)) == {
        "arm", "disarm", "rebar", "relax", "rloo", "nvil", "reinforce", "vimco",
        "gumbel-softmax", "st-gumbel", "concrete", "wake-sleep", "rws",
    }
    # the binary estimators need what only a binary variant has: not the categorical one
    for name in ("arm", "disarm", "rebar", "relax"):
        assert objectives.spec(name).needs == ("binary_terms",)
        with pytest.raises(objectives.NotApplicableError, match="binary_terms"):
            objectives.check_applies(name, variants.get("gumbel-softmax"))
    assert {"rloo", "nvil"} <= set(objectives.applicable(variants.get("gumbel-softmax")))


def test_log_weights_kl_and_draws_match_enumeration():
    """Every sampled log-weight is one of the 8 enumerated ones, drawn with probability q(b | x)
    (chi-square, 7 dof, p > 0.001; power: against the uniform it is rejected); the closed-form
    KL equals the enumerated E_q[log q - log p]; the ELBO and log p(x) estimates agree with the
    enumerated ones within 4 SE."""
    model, x = tiny(seed=1)
    with torch.no_grad():
        t_all = model.binary_terms(x, codes(3).unsqueeze(1))  # [8, B]
        exact, q = t_all.log_w, t_all.log_qz.exp()
        torch.manual_seed(2)
        n = 20_000
        t = model.terms(x, n)
    torch.testing.assert_close(q.sum(0), torch.ones(3, dtype=torch.double))
    torch.testing.assert_close(t.kl, (q * (t_all.log_qz - t_all.log_pz)).sum(0), rtol=1e-10, atol=1e-10)
    lw = t.log_w
    for b in range(x.shape[0]):
        dist = (lw[:, b].unsqueeze(1) - exact[:, b]).abs()
        assert dist.min(1).values.max() < 1e-9
        counts = torch.bincount(dist.argmin(1), minlength=8).double().numpy()
        assert stats.chisquare(counts, (n * q[:, b]).numpy()).pvalue > 1e-3
        assert stats.chisquare(counts).pvalue < 1e-12
    elbo = (q * exact).sum(0)
    assert ((lw.mean(0) - elbo).abs() < 4 * lw.std(0) / math.sqrt(n)).all()
    log_px = torch.logsumexp(exact + t_all.log_qz, 0)
    w = (lw - log_px).exp()
    assert ((torch.logsumexp(lw, 0) - math.log(n) - log_px).abs() < 4 * w.std(0) / math.sqrt(n)).all()


def test_relaxed_and_straight_through_samples():
    """One logistic perturbation gives the hard code, the relaxed code sigmoid((l + L) / tau) (in
    (0, 1), tending to the hard one as tau -> 0) and the straight-through code (the hard value,
    the relaxed gradient); the relaxed densities are torch's LogitRelaxedBernoulli log-densities."""
    from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli

    model, x = tiny()
    for tau, tol in ((1.0, None), (0.05, 0.05)):
        model.tau.fill_(tau)
        torch.manual_seed(3)
        relaxed = model.terms(x, 200, mode="relaxed")
        torch.manual_seed(3)
        hard = model.terms(x, 200, mode="score")
        torch.manual_seed(3)
        st = model.terms(x, 200, mode="straight-through")
        torch.testing.assert_close(relaxed.log_px_z_hard, hard.log_px_z)  # the same hard codes
        torch.testing.assert_close(st.log_px_z.detach(), hard.log_px_z)  # ST's value is the hard one
        if tol is not None:  # at a low temperature the relaxed likelihood is close to the hard one
            assert (relaxed.log_px_z - hard.log_px_z).abs().mean() < tol * hard.log_px_z.abs().mean()
    model.tau.fill_(0.7)
    torch.manual_seed(4)
    lam = model.variational_params(x)
    t = model.terms(x, 5, mode="relaxed")
    torch.manual_seed(4)
    u = torch.rand(5, *lam.shape, dtype=lam.dtype).clamp_(1e-6, 1 - 1e-6)
    s = (lam + torch.logit(u)) / 0.7
    want_q = LogitRelaxedBernoulli(torch.tensor(0.7, dtype=lam.dtype), logits=lam).log_prob(s).sum(-1)
    want_p = LogitRelaxedBernoulli(torch.tensor(0.7, dtype=lam.dtype), logits=model.prior_logits).log_prob(s).sum(-1)
    torch.testing.assert_close(t.log_qz_relaxed, want_q)
    torch.testing.assert_close(t.log_pz_relaxed, want_p)


def test_linear_and_nonlinear_networks_of_the_benchmarks():
    """hidden = [] is one affine map each way (the 'linear' model); [200, 200] leaky_relu the
    'nonlinear' one, with LeakyReLU(0.3) as in the DisARM code."""
    lin = variants.build("bernoulli", x_shape=(784,), latent_dim=200, hidden=())
    assert [type(m) for m in lin.encoder] == [nn.Linear] and lin.encoder[0].weight.shape == (200, 784)
    assert lin.decoder.net[0].weight.shape == (784, 200)
    nonlin = variants.build("bernoulli", x_shape=(784,), latent_dim=200, hidden=(200, 200), activation="leaky_relu")
    widths = [m.out_features for m in nonlin.encoder if isinstance(m, nn.Linear)]
    assert widths == [200, 200, 200]
    slopes = {m.negative_slope for m in nonlin.encoder if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.3}
    assert lin.prior_logits.shape == (200,) and lin.prior_logits.requires_grad  # the learned prior


# -- unbiasedness against the exact gradient ------------------------------------------------------
@pytest.mark.parametrize(
    "name,k",
    [("arm", 1), ("disarm", 1), ("disarm", 2), ("rloo", 2), ("rloo", 1), ("reinforce", 1), ("nvil", 1),
     ("rebar", 1), ("relax", 1)],
)
def test_estimators_are_unbiased_for_the_exact_elbo_gradient(name, k):
    model, x = tiny()
    objective = objectives.build(name)
    if name in ("rebar", "relax"):  # away from their initial values, so the control variate matters
        with torch.no_grad():
            objective.log_temperature.fill_(math.log(0.3))
            objective.eta.fill_(0.7)
    if name == "relax":
        objective.double()(model, x, 1)  # size its network, then give it non-zero weights
        with torch.no_grad():
            for p in objective.net.parameters():
                p.normal_(0, 0.3)
    if name == "nvil":  # a trained-looking baseline: constant c, a non-zero network, v > 1
        objective.double()(model, x, 1)
        with torch.no_grad():
            objective.c.fill_(-3.0)
            for p in objective.baseline.parameters():
                p.normal_(0, 0.3)
    torch.manual_seed(4)
    d = draws(model, x, objective, k)
    assert t_scores(d, exact_gradient(model, x)).max() < MAX_T, name


def test_nvil_variance_normalization_scales_only_the_encoder():
    """With v = 4 (and eval mode: the statistics frozen) NVIL is unbiased for the encoder's exact
    gradient divided by max(1, sqrt(v)) = 2, and for the decoder's and prior's exact gradient."""
    model, x = tiny()
    nvil = objectives.build("nvil").double()
    nvil(model, x, 1)
    nvil.v.fill_(4.0)
    nvil.eval()
    exact = exact_gradient(model, x)
    enc = torch.cat([torch.ones(p.numel()) * (id(p) in {id(q) for q in model.parameter_groups()["encoder"]})
                     for p in model.parameters()]).bool()
    torch.manual_seed(5)
    d = draws(model, x, nvil, 1)
    assert float(nvil.v) == 4.0  # eval mode: no update
    assert t_scores(d, torch.where(enc, exact / 2, exact)).max() < MAX_T
    # power: against the unscaled encoder gradient the same draws are far off (measured max t 14)
    assert t_scores(d[:, enc], exact[enc]).max() > 2 * MAX_T


def test_the_check_detects_a_biased_estimator():
    """Power: DisARM without its sigmoid(|l|) factor, and the relaxed (biased) objectives."""
    model, x = tiny()
    exact = exact_gradient(model, x)

    def no_factor(m, x, k=1, params=None):
        return _antithetic(m, x, k, params, 1.0,
                           lambda f1, f2, u, b1, b2, lam: 0.5 * (f1 - f2) * (b1 != b2).to(lam.dtype) * (1 - 2 * b2))

    for objective in (no_factor, "gumbel-softmax", "concrete"):
        torch.manual_seed(6)
        assert t_scores(draws(model, x, objective, 1), exact).max() > 4 * MAX_T, objective


def test_vimco_is_unbiased_for_the_k_sample_bound_on_binary_latents():
    model, x = tiny()
    t = model.binary_terms(x, codes(3).unsqueeze(1))
    lw, lq = t.log_w, t.log_qz  # [8, B]
    pairs = torch.tensor(list(itertools.product(range(8), repeat=2)))
    bound = (lq[pairs].sum(1).exp() * (torch.logsumexp(lw[pairs], 1) - math.log(2))).sum(0)
    exact = flat_grad(-bound.mean(), list(model.parameters()))
    torch.manual_seed(7)
    assert t_scores(draws(model, x, "vimco", 2), exact).max() < MAX_T


# -- the papers' variance orderings on a fixed checkpoint -------------------------------------------
@pytest.fixture(scope="module")
def checkpoint():
    """A Bernoulli VAE (16 units, linear) trained with DisARM for 20 epochs on the 8x8 digits, a
    fixed batch of 32, and 19 other batches for fitting estimators' own parameters."""
    from bench.config import RunConfig
    from bench.data import load
    from bench.train import run

    data = load("digits")
    cfg = RunConfig(variant="bernoulli", objective="disarm", k=1, latent_dim=16, hidden=[], epochs=20, lr=3e-3,
                    batch_size=50, val_k=2, eval_k=4, gap_size=4, gap_steps=2, gap_k=4, grad_draws=2,
                    grad_batch=4, device="cpu")
    torch.manual_seed(0)
    model = run(cfg, data, lambda m, s: None).model
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(data.train[:32], generator=g)
    fit = [torch.bernoulli(data.train[32 * i : 32 * (i + 1)], generator=g) for i in range(1, 20)]
    return model, x, fit


def encoder_var(model, x, objective, k=1, fit=None, steps=300):
    objective = objectives.build(objective) if isinstance(objective, str) else objective
    if fit is not None:
        objectives.fit(objective, model, fit, k, steps)
    torch.manual_seed(1)
    return gradient_stats(model, x, objective, n=200, k=k)["encoder_var"]


@pytest.mark.slow
def test_variance_orderings(checkpoint):
    """Encoder-gradient variance ratios, measured (200 draws, batch 32, this checkpoint): DisARM /
    ARM 0.81 (Dong et al. 2020: DisARM is never above ARM); RLOO with 2 samples / plain REINFORCE
    with 2 samples 6.1e-4 (Kool et al. 2019); REBAR / REINFORCE with a learned baseline (NVIL
    without variance normalization) 0.34 and RELAX / NVIL 0.39 (Tucker et al. 2017, Grathwohl et
    al. 2018), each trainable estimator's parameters first fitted 300 steps at the checkpoint.
    Thresholds leave a factor >= 1.15 of margin; variance estimates of 200 draws averaged over
    ~1,000 coordinates are within a few percent."""
    model, x, fit = checkpoint
    v = {
        "arm": encoder_var(model, x, "arm"),
        "disarm": encoder_var(model, x, "disarm"),
        "rloo": encoder_var(model, x, "rloo", k=2),
        # plain REINFORCE (no baseline) with 2 samples: VIMCO's k = 1 signal is the ELBO itself,
        # and repeating the batch makes the 2 copies independent draws of the same examples
        "reinforce2": encoder_var(model, x.repeat(2, 1), "vimco", k=1),
        "nvil": encoder_var(model, x, objectives.build("nvil", normalize=False), fit=fit),
        "rebar": encoder_var(model, x, "rebar", fit=fit),
        "relax": encoder_var(model, x, "relax", fit=fit),
    }
    assert v["disarm"] < 0.95 * v["arm"], v
    assert v["rloo"] < 0.01 * v["reinforce2"], v
    assert v["rebar"] < 0.5 * v["nvil"] and v["relax"] < 0.5 * v["nvil"], v


def test_fitting_rebar_lowers_its_variance(checkpoint):
    """The variance-minimizing training of REBAR's temperature and scale works: 300 fitting steps
    at the checkpoint take the encoder-gradient variance from 8.8e-4 (tau = 0.5, eta = 1) to
    5.2e-4 (measured; the test asks for a 20% drop) and move tau down (to ~0.14)."""
    model, x, fit = checkpoint
    before = encoder_var(model, x, "rebar")
    rebar = objectives.build("rebar")
    after = encoder_var(model, x, rebar, fit=fit)
    assert after < 0.8 * before, (before, after)
    assert rebar.log_temperature.exp() < 0.4


# -- the trainable contract -----------------------------------------------------------------------
def test_trainable_objectives_route_their_gradients():
    """REBAR: the decoder and prior get exactly grad -mean log p(x, b) at the exact codes (no
    control variate reaches them); the objective's parameters get the gradient of the squared
    encoder gradient, and backward() writes both into .grad. NVIL: its parameters get the
    gradient of its regression loss, and the model none of it."""
    model, x = tiny()
    rebar = objectives.build("rebar").double()
    params = list(model.parameters())
    enc = model.parameter_groups()["encoder"]
    dec = [p for p in params if all(p is not q for q in enc)]
    torch.manual_seed(8)
    est = rebar(model, x, 2)
    g, own_g = objectives.gradients(rebar, est, params, enc)
    torch.manual_seed(8)
    lam = model.variational_params(x)
    u = torch.rand(2, *lam.shape, dtype=lam.dtype).clamp_(1e-6, 1 - 1e-6)
    b = (lam + torch.logit(u) > 0).double()
    t = model.binary_terms(x, b)
    want = torch.autograd.grad(-(t.log_px_z + t.log_pz).mean(), dec)
    got = [gi for p, gi in zip(params, g) if all(p is not q for q in enc)]
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-12)
    # own gradient = d/d(theta) sum_c g_c^2, by finite differences in eta
    def sq_norm(eta):
        with torch.no_grad():
            rebar.eta.fill_(eta)
        torch.manual_seed(8)
        gg = torch.autograd.grad(rebar(model, x, 2).surrogate, enc)
        return sum(float((gi**2).sum()) for gi in gg)
    h = 1e-5
    fd = (sq_norm(1 + h) - sq_norm(1 - h)) / (2 * h)
    names = [n for n, p in rebar.named_parameters() if p.requires_grad]
    assert names == ["log_temperature", "eta"]
    assert own_g[1].item() == pytest.approx(fd, rel=1e-5)
    with torch.no_grad():
        rebar.eta.fill_(1.0)
    # backward() fills .grad of both
    torch.manual_seed(8)
    objectives.backward(rebar, rebar(model, x, 2), model)
    assert all(p.grad is not None for p in params) and rebar.eta.grad is not None
    for p, gi in zip(params, g):
        torch.testing.assert_close(p.grad, gi, rtol=1e-10, atol=1e-12)
    # NVIL: own loss is the regression of the signal; it never reaches the model
    nvil = objectives.build("nvil").double()
    est = nvil(model, x, 3)
    want_model = torch.autograd.grad(est.surrogate, params, retain_graph=True, allow_unused=True)
    want_own = torch.autograd.grad(est.own_loss, list(nvil.parameters()), retain_graph=True)
    assert torch.autograd.grad(est.own_loss, params, allow_unused=True, retain_graph=True) == (None,) * len(params)
    g_model, g_own = objectives.gradients(nvil, est, params, enc)
    for a, w in zip(g_model + g_own, list(want_model) + list(want_own)):
        torch.testing.assert_close(a, w)


def test_nvil_statistics_are_state_and_update_only_in_training():
    model, x = tiny()
    nvil = objectives.build("nvil").double()
    nvil(model, x, 2)
    assert {"c", "v", "baseline.0.weight", "baseline.2.bias"} <= set(nvil.state_dict())
    c = float(nvil.c)
    nvil.eval()
    nvil(model, x, 2)
    assert float(nvil.c) == c
    nvil.train()
    nvil(model, x, 2)
    assert float(nvil.c) != c
    restored = objectives.build("nvil").double()
    restored(model, x, 1)
    restored.load_state_dict(nvil.state_dict())
    assert float(restored.c) == float(nvil.c)


def test_gradient_stats_reports_the_objective_group_and_restores_its_buffers():
    model, x = tiny()
    nvil = objectives.build("nvil").double()
    nvil(model, x, 1)
    c, v = float(nvil.c), float(nvil.v)
    s = gradient_stats(model, x, nvil, n=5)
    assert set(s) == {f"{g}_{stat}" for g in ("encoder", "decoder", "objective") for stat in GRADIENT_STATS}
    assert s["objective_var"] > 0 and (float(nvil.c), float(nvil.v)) == (c, v)
    assert set(gradient_stats(model, x, "disarm", n=3)) == {f"{g}_{stat}" for g in ("encoder", "decoder") for stat in GRADIENT_STATS}


def test_objective_options_are_checked():
    r = objectives.build("rebar", temperature=0.3, learn_temperature=False)
    assert not r.log_temperature.requires_grad and r.log_temperature.exp().item() == pytest.approx(0.3)
    assert objectives.build("relax", hidden=7, eta=2.0).eta.item() == 2.0
    with pytest.raises(ValueError, match="valid options: .*learn_temperature"):
        objectives.build("rebar", temprature=0.3)
    with pytest.raises(ValueError, match="takes no options"):
        objectives.build("disarm", k=2)
