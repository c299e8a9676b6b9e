"""IAF's local family for the gap decomposition: the per-datapoint flow (Cremer, Li & Duvenaud
2018 fit the flow's parameters per datapoint). ``local_params(x)`` appends a per-datapoint copy of
every MADE weight to ``[mu, log sigma, h]``; these tests check that it is the encoder's q at its
start, that each datapoint's copy acts on that datapoint only, that the masks keep the
log-determinant exact, and that the gap's local optimization really moves the flow weights."""

from __future__ import annotations

import pytest
import torch

import variants
from bench import metrics

DTYPE = torch.float64


def small_iaf(seed: int = 0):
    torch.manual_seed(seed)
    model = variants.build("iaf", x_shape=(12,), latent_dim=3, hidden=(16,), made_hidden=(8,),
                           context_dim=4, flow_length=2).to(DTYPE)
    x = (torch.rand(5, 12, dtype=DTYPE) > 0.5).to(DTYPE)
    return model, x


def test_the_declaration_says_lambda_does_not_fix_q():
    """variational_params is [mu, log sigma, h]: the shared MADE weights act after it."""
    model, x = small_iaf()
    assert type(model).q_determined_by_params is False
    n_flow = sum(p.numel() for p in model.encoder_flow.parameters())
    assert model.variational_params(x).shape == (5, 2 * 3 + 4)
    assert model.local_params(x).shape == (5, 2 * 3 + 4 + n_flow)
    with pytest.raises(ValueError, match="columns"):
        model.log_weights(x, 2, params=torch.zeros(5, 11, dtype=DTYPE))


def test_local_params_start_at_the_encoders_q():
    """The same draws give the same log-weights through the shared and the per-datapoint path."""
    model, x = small_iaf()
    torch.manual_seed(1)
    a = model.log_weights(x, 7)
    torch.manual_seed(1)
    b = model.log_weights(x, 7, params=model.local_params(x))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_each_datapoint_owns_its_flow():
    """Perturbing datapoint 0's flow weights changes datapoint 0's log-weights only, and the
    gradient reaches its unmasked weights (and no masked one: they are multiplied by 0)."""
    model, x = small_iaf()
    lam = model.local_params(x).detach()
    base = 2 * 3 + 4
    shift = torch.zeros_like(lam)
    shift[0, base:] = 0.3 * torch.randn(lam.shape[1] - base, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    torch.manual_seed(3)
    a = model.log_weights(x, 4, params=lam)
    torch.manual_seed(3)
    b = model.log_weights(x, 4, params=lam + shift)
    assert not torch.allclose(a[:, 0], b[:, 0])
    torch.testing.assert_close(a[:, 1:], b[:, 1:], rtol=0, atol=0)
    lam.requires_grad_(True)
    (g,) = torch.autograd.grad(model.log_weights(x, 4, params=lam)[:, 0].sum(), lam)
    assert bool((g[1:] == 0).all()) and bool((g[0, base:] != 0).any())
    masks = torch.cat([  # layers.j.weight has the buffer layers.j.mask; biases and the context none
        dict(m.named_buffers()).get(n.replace("weight", "mask"), torch.ones_like(p)).reshape(-1)
        for m in model.encoder_flow for n, p in m.named_parameters()
    ])
    assert len(masks) == lam.shape[1] - base and bool((masks == 0).any())
    assert bool((g[0, base:][masks == 0] == 0).all())


def test_per_datapoint_flow_log_det_equals_autograd_jacobian():
    """With free (perturbed) per-datapoint weights the masks keep each layer autoregressive: the
    log-determinant returned equals log|det dz_T/dz_0| from autograd, per datapoint, to 1e-9."""
    model, x = small_iaf()
    lam = model.local_params(x).detach()
    lam[:, 10:] += 0.5 * torch.randn(lam[:, 10:].shape, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    h = model.split_params(lam)[1]
    theta = lam[:, 10:] * model.theta_scale()
    z0 = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    _, log_det = model.local_flow(z0, h, theta)
    for b in range(5):
        def f(v, b=b):
            z = z0.clone()
            z[0, b] = v
            return model.local_flow(z, h, theta)[0][0, b]
        J = torch.autograd.functional.jacobian(f, z0[0, b])
        torch.testing.assert_close(torch.linalg.slogdet(J)[1], log_det[0, b], rtol=0, atol=1e-9)


def test_gap_optimizes_the_flow_weights_per_datapoint():
    """The local optimization moves each datapoint's flow weights away from the shared ones, to
    different values per datapoint, with the model frozen; before, lambda had no flow weights."""
    model, x = small_iaf()
    with torch.no_grad():
        lam0 = model.local_params(x)
    lam, _ = metrics.optimize_local(model, x, lam0, steps=100)
    moved = (lam - lam0)[:, 10:].abs().amax(1)
    assert bool((moved > 1e-3).all()), moved
    assert not torch.allclose(lam[0, 10:], lam[1, 10:])
    assert all(p.grad is None for p in model.parameters())
