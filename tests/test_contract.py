"""The registry contract (the README's "Adding a variant and an objective", docs/models.md, ``variants/base.py``,
``bench/objectives/registry.py``), parametrized over every registered variant and objective: a new
variant is tested by registering it."""

from __future__ import annotations

import math

import pytest
import torch

import variants
from bench import objectives
from bench.config import RunConfig
from bench.data import load
from bench.train import evaluate_elbo, run

B, K = 6, 3


def make(name: str, seed: int = 0):
    """A small instance of ``name`` and a matching batch (digits-shaped binary, or continuous)."""
    torch.manual_seed(seed)
    if name == "linear-gaussian":
        model = variants.build(name, x_shape=(6,), latent_dim=2, likelihood="gaussian")
        x = torch.randn(B, 6)
    else:
        model = variants.build(name, x_shape=(1, 8, 8), latent_dim=4, hidden=(16,))
        x = torch.bernoulli(torch.full((B, 1, 8, 8), 0.3))
    return model, x


ALL = variants.available()


def test_registry_names_and_unknown_name():
    assert {"vanilla", "iwae", "planar-flow", "iaf", "hierarchical", "ladder", "gumbel-softmax",
            "linear-gaussian"} <= set(ALL)
    with pytest.raises(KeyError) as e:
        variants.build("no-such-variant", x_shape=(4,))
    for name in ALL:
        assert name in str(e.value)


def test_unknown_option_names_valid_ones():
    with pytest.raises(TypeError, match="latent_dim"):
        variants.build("vanilla", x_shape=(4,), latent_dimm=3)


@pytest.mark.parametrize("name", ALL)
def test_log_weights_shape_finite_and_seeded(name):
    model, x = make(name)
    torch.manual_seed(1)
    lw = model.log_weights(x, K)
    assert lw.shape == (K, B)
    assert torch.isfinite(lw).all()
    torch.manual_seed(1)
    assert torch.equal(lw, model.log_weights(x, K))
    torch.manual_seed(2)
    if type(model).deterministic_q:  # q is a point mass (VQ-VAE): one value, k times
        assert torch.equal(lw, model.log_weights(x, K)) and torch.equal(lw, lw[:1].expand(K, B))
    else:
        assert not torch.equal(lw, model.log_weights(x, K))  # it is a Monte Carlo quantity
    flat = model.log_weights(x.reshape(B, -1), 1)
    assert flat.shape == (1, B)


@pytest.mark.parametrize("name", ALL)
def test_building_is_seeded(name):
    a, x = make(name, seed=3)
    b, _ = make(name, seed=3)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


@pytest.mark.parametrize("name", ALL)
def test_sample_and_reconstruct_shapes(name):
    model, x = make(name)
    s = model.sample(5)
    assert s.shape == (5, *model.x_shape) and torch.isfinite(s).all()
    assert model.sample(5, mean=True).shape == (5, *model.x_shape)
    r = model.reconstruct(x)
    assert r.reshape(B, -1).shape == (B, model.x_dim) and torch.isfinite(r).all()


@pytest.mark.parametrize("name", ALL)
def test_variational_params_round_trip(name):
    """terms(x, k, params=lambda(x)) is the amortized q itself."""
    model, x = make(name)
    lam = model.variational_params(x)
    assert lam.dim() == 2 and lam.shape[0] == B
    torch.manual_seed(5)
    a = model.log_weights(x, K)
    torch.manual_seed(5)
    b = model.log_weights(x, K, params=lam)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    shift = 0.3 * torch.randn(lam.shape, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    c = model.log_weights(x, K, params=lam + shift)  # a free lam is really what is evaluated
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", ALL)
def test_parameter_groups_partition(name):
    model, _ = make(name)
    g = model.parameter_groups()
    assert g["encoder"] and g["decoder"]
    ids = [id(p) for p in g["encoder"] + g["decoder"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_default_objective_gradients_reach_every_parameter(name):
    model, x = make(name)
    cls = type(model)
    est = objectives.build(cls.default_objective)(model, x, max(cls.default_k, 2))
    assert est.value.shape == (B,) and not est.value.requires_grad
    assert est.surrogate.dim() == 0
    est.surrogate.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets an all-zero gradient"


@pytest.mark.parametrize("name", ALL)
def test_every_applicable_objective_runs(name):
    model, x = make(name)
    names = objectives.applicable(type(model))
    assert type(model).default_objective in names
    for o in names:
        est = objectives.build(o)(model, x, 4)
        assert est.value.shape == (B,) and torch.isfinite(est.value).all(), o
        assert torch.isfinite(est.surrogate), o
    for o in set(objectives.available()) - set(names):
        with pytest.raises(objectives.NotApplicableError, match=name):
            objectives.check_applies(o, type(model))


@pytest.mark.parametrize("name", ALL)
def test_elbo_le_iwae5_le_iwae50(name):
    """On a fixed batch, ELBO <= IWAE_5 <= IWAE_50 (Burda et al. 2016, Thm 1), both gaps
    significantly positive for an untrained q: more than 3 standard errors over 40 independent
    replicates x B examples (this also fails if the k samples were not independent draws)."""
    model, x = make(name)
    with torch.no_grad():
        lw = model.log_weights(x, 50 * 40).reshape(40, 50, -1)  # [replicate, 50 draws, B]
    elbo = lw.mean(1)
    iwae5 = (torch.logsumexp(lw.reshape(40, 10, 5, -1), 2) - math.log(5)).mean(1)
    iwae50 = torch.logsumexp(lw, 1) - math.log(50)
    if type(model).deterministic_q:  # a point-mass q: the three bounds coincide (to rounding)
        torch.testing.assert_close(iwae5, elbo, rtol=0, atol=1e-4)
        torch.testing.assert_close(iwae50, elbo, rtol=0, atol=1e-4)
        return
    for gap in ((iwae5 - elbo).flatten(), (iwae50 - iwae5).flatten()):
        assert gap.mean() > 3 * gap.std() / math.sqrt(len(gap)), name


@pytest.mark.parametrize("name", sorted(set(ALL) - {"linear-gaussian"}))
def test_training_raises_the_validation_bound(name):
    """Three epochs of the real loop on 600 digits raise the validation ELBO by over 1 nat."""
    cfg = RunConfig(variant=name, objective=variants.get(name).default_objective, k=variants.get(name).default_k,
                    latent_dim=4, hidden=[32], epochs=3, lr=3e-3, batch_size=50, train_size=600, test_size=20,
                    val_k=4, eval_k=8, gap_size=4, gap_steps=2, gap_k=8, grad_draws=2, grad_batch=4, device="cpu")
    data = load("digits")
    torch.manual_seed(0)
    from bench.train import build_model

    before = evaluate_elbo(build_model(cfg, data), data.val, 4)["elbo"]
    seen = {}
    run(cfg, data, lambda m, step: seen.setdefault(step, {}).update(m))
    after = seen[3]["val/elbo"]
    assert after > before + 1.0, (before, after)


@pytest.mark.parametrize("name", ALL)
def test_continuous_data_with_a_gaussian_likelihood(name):
    """Every variant also models continuous data: p(x | z) Gaussian, finite log-weights that
    depend on x, samples of the data's shape."""
    torch.manual_seed(0)
    model = variants.build(name, x_shape=(5,), latent_dim=2, hidden=(8,), likelihood="gaussian")
    x = torch.randn(4, 5)
    torch.manual_seed(1)
    lw = model.log_weights(x, 3)
    assert lw.shape == (3, 4) and torch.isfinite(lw).all()
    torch.manual_seed(1)
    assert not torch.allclose(lw, model.log_weights(x + 10.0, 3))
    assert model.sample(2).shape == (2, 5)


@pytest.mark.parametrize("name", [n for n in ALL if hasattr(variants.get(n), "encode")])
def test_single_latent_prior_encode_decode(name):
    """prior(), encode(x) and decode(z) of single-latent variants fit together: a draw of q has
    the prior's event shape, both give it a finite log-density, decoding it gives p(x | z) over x,
    and where q is reparameterizable its rsample carries gradient to the encoder."""
    model, x = make(name)
    q = model.encode(x)
    z = q.sample()
    assert z.shape[1:] == model.prior().event_shape and z.shape[0] == B
    assert q.log_prob(z).shape == (B,) and torch.isfinite(q.log_prob(z)).all()
    assert torch.isfinite(model.prior().log_prob(z)).all()
    assert model.decode(z).log_prob(x.reshape(B, -1)).shape == (B,)
    if q.has_rsample:
        grads = torch.autograd.grad(q.rsample().sum(), model.parameter_groups()["encoder"], allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
