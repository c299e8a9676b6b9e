"""Planar flows and IAF: log-determinants against autograd Jacobians, invertibility, the
autoregressive structure, the density's normalization, and the variant contract pieces."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

import variants
from variants.iaf import MADE
from variants.planar_flow import constrain_u, planar

DTYPE = torch.float64  # Jacobian comparisons in double: rounding is then ~1e-15, tolerances 1e-9


def batched_jacobian(f, z: torch.Tensor) -> torch.Tensor:
    """``[N, d, d]`` Jacobians of a map ``[N, d] -> [N, d]`` that acts on each row separately."""
    z = z.detach().requires_grad_(True)
    y = f(z)
    rows = [torch.autograd.grad(y[:, i].sum(), z, retain_graph=True)[0] for i in range(z.shape[1])]
    return torch.stack(rows, dim=1)


# -- planar -----------------------------------------------------------------------------------------
def test_planar_log_det_equals_autograd_jacobian():
    g = torch.Generator().manual_seed(1)
    d = 3
    for _ in range(20):
        u, w, z = (torch.randn(d, generator=g, dtype=DTYPE) * 2 for _ in range(3))
        b = torch.randn((), generator=g, dtype=DTYPE)
        J = jacobian(lambda v, u=u, w=w, b=b: planar(v, u, w, b)[0], z)
        sign, logabsdet = torch.linalg.slogdet(J)
        assert sign == 1
        torch.testing.assert_close(planar(z, u, w, b)[1], logabsdet, rtol=0, atol=1e-9)


def adversarial_raw_params(d: int = 3) -> list[tuple[torch.Tensor, ...]]:
    """Raw (u, w, b, z) that break an unconstrained planar layer: u antiparallel to w with
    w^T u = a far below -1, w at several scales, and z on the hyperplane w^T z + b = 0 where
    tanh' = 1 (the worst case for 1 + tanh' w^T u_hat). Plus w = 0 (no division by zero)."""
    cases = []
    for scale_w in (1e-3, 1.0, 1e3):
        for a in (-2.0, -10.0, -30.0):
            w = torch.full((d,), scale_w, dtype=DTYPE)
            u = a * w / (w @ w)
            z = torch.linspace(-1, 1, d, dtype=DTYPE)
            cases.append((u, w, -(w @ z), z))
    zero_w = torch.zeros(d, dtype=DTYPE)
    cases.append((torch.ones(d, dtype=DTYPE), zero_w, torch.tensor(0.0, dtype=DTYPE), zero_w))
    return cases


def test_planar_constraint_keeps_every_layer_invertible():
    """w^T u_hat >= -1 and det > 0 for random raw parameters over five decades and for the
    adversarial ones. |w^T u| is kept <= 30: beyond that the exact determinant softplus(w^T u)
    (< 1e-13) is smaller than the double rounding of 1 + w^T u_hat (~1e-16 |w^T u|), so the
    sign of a numerically computed Jacobian says nothing (see the module docstring)."""
    g = torch.Generator().manual_seed(2)
    N, d = 500, 3
    scale = 10 ** torch.empty(N, 1, dtype=DTYPE).uniform_(-3, 2, generator=g)
    u = torch.randn(N, d, generator=g, dtype=DTYPE) * scale * 10
    w = torch.randn(N, d, generator=g, dtype=DTYPE) / scale  # w^T u = O(10) at every scale
    u = u * (30 / (w * u).sum(-1, keepdim=True).abs()).clamp(max=1)  # cap |w^T u| at 30
    z = torch.randn(N, d, generator=g, dtype=DTYPE)
    # half of the z on the tanh' = 1 hyperplane
    b = torch.where(torch.arange(N) % 2 == 0, -(w * z).sum(-1), torch.randn(N, generator=g, dtype=DTYPE))
    adv = adversarial_raw_params(d)
    u, w, b, z = (torch.cat([t, torch.stack([c[i] for c in adv])]) for i, t in enumerate((u, w, b, z)))
    assert ((w * u).sum(-1) < -1).float().mean() > 0.3, "many raw u must violate the condition"
    wu_hat = (w * constrain_u(u, w)).sum(-1)
    # exactly w^T u_hat = -1 + softplus(w^T u) > -1; double rounding is ~1e-16 |w^T u| <= 1e-14
    assert (wu_hat >= -1 - 1e-13).all()
    J = batched_jacobian(lambda v: planar(v, u, w, b)[0], z)
    sign, logabsdet = torch.linalg.slogdet(J)
    log_det = planar(z, u, w, b)[1]
    assert (sign == 1).all(), "a constrained planar layer must have a positive Jacobian determinant"
    # log det agrees where det is large against the Jacobian's own rounding (|error| ~1e-14 / det)
    ok = logabsdet > -18
    assert ok.float().mean() > 0.9
    torch.testing.assert_close(log_det[ok], logabsdet[ok], rtol=0, atol=1e-4)


def test_unconstrained_u_would_not_be_invertible():
    # guards the test above: the same adversarial raw u without the constraint gives det < 0
    u, w, b, z = adversarial_raw_params()[0]
    J = torch.eye(3, dtype=DTYPE) + torch.outer(u, w)  # tanh' = 1 on the hyperplane
    assert torch.linalg.det(J) < 0


# -- IAF --------------------------------------------------------------------------------------------
def made(d: int = 5, order=None, seed: int = 3) -> MADE:
    torch.manual_seed(seed)
    order = torch.arange(d) if order is None else order
    m = MADE(d, context_dim=2, hidden=(7, 6), order=order, gate_bias=1.0).to(DTYPE)
    with torch.no_grad():  # larger weights than the default init, so every dependence is visible
        for p in m.parameters():
            p.mul_(3)
    return m


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]])
def test_iaf_step_is_triangular_in_its_order_and_log_det_matches(order):
    order = torch.tensor(order)
    m = made(order=order)
    h = torch.randn(2, dtype=DTYPE)
    pos = torch.empty(5, dtype=torch.long)
    pos[order] = torch.arange(5)
    later = pos[None, :] > pos[:, None]  # later[i, j]: j comes after i in the order
    earlier = pos[None, :] < pos[:, None]
    for _ in range(5):
        z = torch.randn(5, dtype=DTYPE)
        J = jacobian(lambda v: m.step(v, h)[0], z)
        assert (J[later] == 0).all(), "output i must not depend on z_j for j after i"
        assert (J[earlier].abs() > 1e-12).all(), "every earlier variable should feed output i"
        m_, s_raw = m(z, h)
        torch.testing.assert_close(torch.diagonal(J), torch.sigmoid(s_raw + 1.0), rtol=0, atol=1e-12)
        torch.testing.assert_close(m.step(z, h)[1], torch.linalg.slogdet(J)[1], rtol=0, atol=1e-9)


def test_iaf_inverse_is_exact():
    m = made()
    h = torch.randn(4, 2, dtype=DTYPE)
    z = torch.randn(4, 5, dtype=DTYPE)
    torch.testing.assert_close(m.inverse(m.step(z, h)[0], h), z, rtol=0, atol=1e-10)


def test_iaf_variant_reverses_order_and_full_flow_log_det_matches():
    torch.manual_seed(0)
    model = variants.build("iaf", x_shape=(6,), latent_dim=4, hidden=(8,), flow_length=3).to(DTYPE)
    orders = [m.order.tolist() for m in model.encoder_flow]
    assert orders == [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]
    h = torch.randn(3, model.context_dim, dtype=DTYPE)
    z = torch.randn(3, 4, dtype=DTYPE)
    J = batched_jacobian(lambda v: model.flow(v, h)[0], z)
    torch.testing.assert_close(model.flow(z, h)[1], torch.linalg.slogdet(J)[1], rtol=0, atol=1e-9)


# -- both flows as variants -----------------------------------------------------------------------
FLOWS = ["planar-flow", "iaf"]


def small(name: str, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = variants.build(name, x_shape=(1, 8, 8), latent_dim=2, hidden=(16,), **kw).to(dtype)
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.3, dtype=dtype))
    return model, x


@pytest.mark.parametrize("name", FLOWS)
def test_encode_log_prob_matches_terms(name):
    model, x = small(name, DTYPE)
    torch.manual_seed(5)
    t = model.terms(x, 7)
    torch.manual_seed(5)
    q = model.encode(x)
    z = q.rsample((7,))  # the same base noise as terms drew
    torch.testing.assert_close(q.log_prob(z), t.log_qz, rtol=0, atol=1e-10)
    torch.testing.assert_close(model.prior().log_prob(z), t.log_pz, rtol=0, atol=1e-10)
    if name == "iaf":  # a fresh tensor misses the transforms' cache: the exact inverse is used
        torch.testing.assert_close(q.log_prob(z.clone()), t.log_qz, rtol=0, atol=1e-8)
    else:
        with pytest.raises(NotImplementedError):
            q.log_prob(z.clone())


@pytest.mark.parametrize("name", FLOWS)
def test_flow_density_is_normalized(name):
    """E_q[p(z) / q(z)] = 1 for any normalized p: checks log q including the sign of log det.

    p = N(c, 0.25^2 I) around a point c inside q's bulk, narrower than q, so the weights are
    bounded-variance; 4 standard errors (the SE estimated from the same 40,000 draws) allowed."""
    model, x = small(name, DTYPE, flow_length=3)
    with torch.no_grad():
        q = model.encode(x[:1])
        z = q.rsample((40_000,))
        log_q = q.log_prob(z)[:, 0]
        c = z[:100, 0].mean(0)
        p = torch.distributions.Independent(torch.distributions.Normal(c, 0.25 * torch.ones_like(c)), 1)
        w = torch.exp(p.log_prob(z[:, 0]) - log_q)
    se = w.std() / math.sqrt(len(w))
    assert se < 0.05, "the check should be informative"
    assert abs(w.mean() - 1) < 4 * se


@pytest.mark.parametrize("name", FLOWS)
def test_flows_have_no_closed_form_kl_and_only_the_pathwise_mode(name):
    """(The round trip through params = variational_params(x) is in tests/test_contract.py.)"""
    model, x = small(name)
    assert model.terms(x, 3).kl is None and model.modes == {"reparam"}


@pytest.mark.parametrize("name", FLOWS)
def test_gaussian_likelihood_and_sampling(name):
    torch.manual_seed(0)
    model = variants.build(name, x_shape=(5,), latent_dim=2, hidden=(8,), likelihood="gaussian")
    x = torch.randn(3, 5)
    lw = model.log_weights(x, 4)
    assert lw.shape == (4, 3) and torch.isfinite(lw).all()
    assert model.sample(6).shape == (6, 5) and model.sample(2, mean=True).shape == (2, 5)
