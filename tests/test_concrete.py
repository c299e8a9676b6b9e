"""The relaxed (Concrete) KL of Maddison, Mnih & Teh (2017): the relaxed densities against torch's
own ExpConcrete, the objective's surrogate against a hand computation, and its logged value (the
discrete ELBO, never the relaxed one)."""

from __future__ import annotations

import math

import torch
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

import variants
from bench import objectives
from variants.gumbel_softmax import exp_concrete_log_prob, gumbel_noise


def tiny(seed=0, **options):
    torch.manual_seed(seed)
    model = variants.build("gumbel-softmax", x_shape=(5,), hidden=(8,), n_latent=2, n_classes=3, **options).double()
    return model, (torch.rand(3, 5) > 0.5).double()


def test_exp_concrete_density_is_torchs():
    torch.manual_seed(1)
    logits = torch.randn(4, 6, dtype=torch.double)
    for tau in (0.3, 1.0, 2.5):
        d = ExpRelaxedCategorical(torch.tensor(tau, dtype=torch.double), logits=logits)
        s = d.rsample((7,))
        torch.testing.assert_close(exp_concrete_log_prob(s, logits, tau), d.log_prob(s))
        # unnormalized logits give the same density (alpha is defined up to scale)
        torch.testing.assert_close(exp_concrete_log_prob(s, logits + 3.0, tau), d.log_prob(s))


def test_relaxed_mode_densities_and_concrete_surrogate():
    """In relaxed mode the terms hold log q_tau(s | x) and log p_lambda(s) of the same log-space
    sample s = log_softmax((log pi + g) / tau) whose exp the decoder sees; the prior has uniform
    alpha and temperature prior_tau (or tau). The surrogate is minus the relaxed ELBO."""
    model, x = tiny(prior_tau=0.5)
    model.tau.fill_(0.8)
    torch.manual_seed(2)
    t = model.terms(x, 4, mode="relaxed")
    est_seed = torch.random.get_rng_state()
    torch.manual_seed(2)
    log_pi = model.log_probs(model.variational_params(x))
    g = gumbel_noise((4, *log_pi.shape), log_pi)
    s = torch.log_softmax((log_pi + g) / 0.8, -1)
    want_q = ExpRelaxedCategorical(torch.tensor(0.8, dtype=torch.double), logits=log_pi).log_prob(s).sum(-1)
    prior = ExpRelaxedCategorical(torch.tensor(0.5, dtype=torch.double), logits=torch.zeros_like(s))
    want_p = prior.log_prob(s).sum(-1)
    torch.testing.assert_close(t.log_qz_relaxed, want_q)
    torch.testing.assert_close(t.log_pz_relaxed, want_p)
    torch.testing.assert_close(t.log_px_z, model.decoder(s.exp().flatten(-2)).log_prob(x))
    torch.manual_seed(2)
    est = objectives.build("concrete")(model, x, 4)
    want = -(t.log_px_z - (want_q - want_p)).mean(0).mean()
    torch.testing.assert_close(est.surrogate, want)
    torch.testing.assert_close(est.value, (t.log_px_z_hard.mean(0) - t.kl).detach())
    assert torch.random.get_rng_state().equal(est_seed)  # the same number of draws in both


def test_concrete_logs_the_discrete_elbo():
    """The value is an unbiased estimate of the discrete ELBO (enumerated over the 9 categorical
    or 8 binary codes), within 4 SE, on both discrete variants (the surrogate is the relaxed ELBO,
    test above; its gradient is biased, tests/test_binary.py)."""
    from tests.test_binary import exact_elbo
    from tests.test_binary import tiny as tiny_binary
    from tests.test_gumbel import enumerated_log_w
    from tests.test_gumbel import tiny_model as tiny_categorical

    n = 4000
    for model, x in (tiny_categorical(seed=3), tiny_binary(seed=3)):
        with torch.no_grad():
            if model.name == "gumbel-softmax":
                lw, lq = enumerated_log_w(model, x)
                elbo = (lq.exp() * lw).sum(0)
            else:
                elbo = exact_elbo(model, x)
            torch.manual_seed(4)
            est = objectives.build("concrete")(model, x.repeat(n, 1), 1)
        vals = est.value.reshape(n, -1)
        assert ((vals.mean(0) - elbo).abs() < 4 * vals.std(0) / math.sqrt(n)).all(), model.name
