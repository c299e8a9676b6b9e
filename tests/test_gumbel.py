"""The Gumbel-softmax variant (Jang, Gu & Poole 2017): samples, temperature, discrete log-weights.

Statistical tests use fixed seeds; each states its tolerance. Known answers come from enumerating
a latent space of 2 variables x 3 classes (9 codes).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

import variants
from bench import objectives
from variants.gumbel_softmax import gumbel_noise, gumbel_softmax_sample

N_LAT, N_CLS, X_DIM = 2, 3, 5


def tiny_model(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = variants.build(
        "gumbel-softmax", x_shape=(X_DIM,), latent_dim=99, hidden=(8,),
        n_latent=N_LAT, n_classes=N_CLS, **options,
    ).double()
    x = (torch.rand(3, X_DIM) > 0.5).double()
    return model, x


def enumerate_codes(model) -> torch.Tensor:
    """All ``n_classes ** n_latent`` one-hot codes, ``[M, n_latent, n_classes]``."""
    idx = torch.tensor(list(itertools.product(range(model.n_classes), repeat=model.n_latent)))
    return torch.nn.functional.one_hot(idx, model.n_classes).double()


def enumerated_log_w(model, x):
    """Brute force: ``log p(x | z) + log p(z) - log q(z | x)`` and ``log q`` for every code, ``[M, B]``."""
    codes = enumerate_codes(model)  # [M, n, c]
    log_pi = model.log_probs(model.variational_params(x))  # [B, n, c]
    log_q = torch.einsum("mnc,bnc->mb", codes, log_pi)
    log_px_z = model.decoder(codes.flatten(-2).unsqueeze(1)).log_prob(x)  # [M, B]
    log_pz = -model.n_latent * math.log(model.n_classes)
    return log_px_z + log_pz - log_q, log_q


def test_registered_with_declared_contract():
    model, _ = tiny_model()
    cls = type(model)
    assert "gumbel-softmax" in variants.available()
    assert cls.latent == "discrete" and cls.eval_mode == "score"
    assert set(cls.modes) == {"score", "relaxed", "straight-through"}
    assert model.variational_params(torch.zeros(4, X_DIM, dtype=torch.double)).shape == (4, 6)
    assert model.sample(7).shape == (7, X_DIM)
    recon = model.reconstruct(torch.ones(4, X_DIM, dtype=torch.double))
    assert recon.shape == (4, X_DIM) and ((recon > 0) & (recon < 1)).all()  # Bernoulli means
    # latent_dim is accepted and ignored: the code size is n_latent * n_classes
    assert model.code_dim == N_LAT * N_CLS
    assert set(objectives.applicable(cls)) == {
        "gumbel-softmax", "st-gumbel", "concrete", "reinforce", "rloo", "nvil", "vimco", "wake-sleep", "rws"
    }
    with pytest.raises(objectives.NotApplicableError, match="discrete"):
        objectives.check_applies("elbo", cls)


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_relaxed_samples_lie_on_the_simplex(tau):
    torch.manual_seed(1)
    logits = 3 * torch.randn(4, 6, 7)
    hard, relaxed, _ = gumbel_softmax_sample(logits, tau, k=50)
    assert relaxed.shape == (50, 4, 6, 7)
    assert (relaxed >= 0).all()
    torch.testing.assert_close(relaxed.sum(-1), torch.ones(50, 4, 6), rtol=0, atol=1e-6)
    assert (hard.sum(-1) == 1).all() and ((hard == 0) | (hard == 1)).all()
    # the hard sample is the argmax of the relaxed one (same perturbation, monotone softmax)
    assert torch.equal(hard.argmax(-1), relaxed.argmax(-1))


def test_low_temperature_gives_one_hot_draws_with_the_categorical_frequencies():
    torch.manual_seed(2)
    probs = torch.tensor([0.05, 0.1, 0.2, 0.25, 0.4], dtype=torch.double)
    n = 20_000
    gaps = []
    for tau in (1.0, 0.3, 0.1, 0.01):
        hard, relaxed, _ = gumbel_softmax_sample(probs.log(), tau, k=n)
        gaps.append(float((relaxed - hard).abs().sum(-1).mean()))
    # distance to the one-hot draw shrinks as tau -> 0, and is negligible at tau = 0.01
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.05, gaps
    counts = torch.bincount(relaxed.argmax(-1), minlength=5).double()
    # chi-square goodness of fit, 4 dof, fixed seed: a correct sampler gives p ~ U(0, 1); we ask
    # p > 0.001. Power: the same counts against the uniform distribution are rejected outright.
    assert stats.chisquare(counts.numpy(), (n * probs).numpy()).pvalue > 1e-3
    assert stats.chisquare(counts.numpy()).pvalue < 1e-12


def test_straight_through_is_one_hot_forward_and_relaxed_backward():
    torch.manual_seed(3)
    logits = torch.randn(4, 3, 5, dtype=torch.double, requires_grad=True)
    noise = gumbel_noise((2, 4, 3, 5), logits)
    hard, relaxed, st = gumbel_softmax_sample(logits, 0.7, k=2, noise=noise)
    torch.testing.assert_close(st, hard, rtol=0, atol=1e-12)
    weights = torch.randn(2, 4, 3, 5, dtype=torch.double)
    (g_st,) = torch.autograd.grad((weights * st).sum(), logits, retain_graph=True)
    (g_rel,) = torch.autograd.grad((weights * relaxed).sum(), logits)
    assert g_st.abs().max() > 1e-3  # a real gradient, not zero
    torch.testing.assert_close(g_st, g_rel, rtol=1e-12, atol=1e-12)
    # through the model: in straight-through mode log p(x | z) is evaluated at the one-hot code
    model, x = tiny_model()
    t = model.terms(x, 4, mode="straight-through")
    torch.testing.assert_close(t.log_px_z.detach(), t.log_px_z_hard)


def test_discrete_log_weights_match_brute_force_enumeration():
    model, x = tiny_model(seed=4)
    with torch.no_grad():
        exact, log_q = enumerated_log_w(model, x)  # [9, B]
        # the 9 values must be distinguishable for the matching below to identify the code
        sep = (exact.unsqueeze(0) - exact.unsqueeze(1)).abs() + 1e3 * torch.eye(9).unsqueeze(-1)
        assert sep.min() > 1e-4
        torch.manual_seed(5)
        n = 20_000
        t = model.terms(x, n)  # eval mode: exact one-hot samples
        log_w = model.log_weights(x, n)
    # analytic KL = enumerated E_q[log q - log p]
    q = log_q.exp()
    kl_enum = (q * (log_q + N_LAT * math.log(N_CLS))).sum(0)
    torch.testing.assert_close(t.kl, kl_enum, rtol=1e-10, atol=1e-10)
    for b in range(x.shape[0]):
        dist = (log_w[:, b].unsqueeze(1) - exact[:, b]).abs()  # [n, 9]
        # every sampled log-weight is one of the 9 enumerated ones (float64 round-off only) ...
        assert dist.min(1).values.max() < 1e-9
        counts = torch.bincount(dist.argmin(1), minlength=9).double()
        # ... drawn with probability q(z | x): chi-square, 8 dof, fixed seed, p > 0.001
        assert stats.chisquare(counts.numpy(), (n * q[:, b]).numpy()).pvalue > 1e-3
    # and the bounds: E_q log w = enumerated ELBO, logmeanexp -> log p(x) = logsumexp_z log p(x, z)
    elbo = (q * exact).sum(0)
    se = log_w.std(0) / math.sqrt(n)
    assert ((log_w.mean(0) - elbo).abs() < 4 * se).all()  # 4 standard errors
    log_px = torch.logsumexp(exact + log_q, 0)
    w = (log_w - log_px).exp()  # importance weights / p(x): mean 1
    est = torch.logsumexp(log_w, 0) - math.log(n)
    assert ((est - log_px).abs() < 4 * w.std(0) / math.sqrt(n)).all()  # delta method, 4 SE


def test_objectives_log_the_discrete_elbo_not_the_relaxed_surrogate():
    model, x = tiny_model(seed=6)
    with torch.no_grad():
        exact, log_q = enumerated_log_w(model, x)
        elbo = (log_q.exp() * exact).sum(0)
        torch.manual_seed(7)
        n = 4000
        for name in ("gumbel-softmax", "st-gumbel", "reinforce"):
            est = objectives.build(name)(model, x.repeat(n, 1), 1)
            vals = est.value.reshape(n, -1)
            # the logged value is an unbiased estimate of the discrete ELBO: within 4 SE
            se = vals.std(0) / math.sqrt(n)
            assert ((vals.mean(0) - elbo).abs() < 4 * se).all(), name
        # the relaxed surrogate at tau = 1 is a different number: log p(x | y) at interior points
        # of the simplex. Its batch mean is off the ELBO by far more than its standard error.
        t = model.terms(x.repeat(n, 1), 1, mode="relaxed")
        relaxed = (t.log_px_z[0] - t.kl).reshape(n, -1)
        off = (relaxed.mean(0) - elbo).abs() / (relaxed.std(0) / math.sqrt(n))
        assert off.max() > 10


def test_temperature_schedule():
    model, _ = tiny_model(tau0=1.0, tau_min=0.5, anneal_rate=1e-3, anneal_every=100)
    seen = {}
    for step in range(1001):
        model.on_train_step(step)
        seen[step] = float(model.tau)
    assert seen[0] == 1.0 and seen[99] == 1.0  # updated only every 100 steps
    assert seen[100] == pytest.approx(math.exp(-0.1)) and seen[150] == seen[100]
    assert seen[600] == pytest.approx(math.exp(-0.6))
    assert seen[700] == 0.5 and seen[1000] == 0.5  # exp(-0.7) < 0.5: floored at tau_min
    assert model.temperature(10**6) == 0.5
    # the buffer travels with the weights
    assert float(model.state_dict()["tau"]) == 0.5
    with pytest.raises(variants.VariantConfigError):
        variants.build("gumbel-softmax", x_shape=(4,), tau_min=2.0, tau0=1.0)
