"""Batch normalization in the ladder VAE's deterministic layers (Sønderby et al. 2016): batch
statistics in training, running statistics (a fixed affine map, a proper density) in every
evaluation, and measurements that leave the running statistics as they were."""

from __future__ import annotations

import torch

import variants
from bench import metrics
from variants.ladder import BatchNorm


def tiny(**kw):
    torch.manual_seed(0)
    model = variants.build(
        "ladder", x_shape=(6,), latent_dim=3, hidden=(5,), upper_latent_dims=(2,), hidden2=(4,), **kw
    ).double()
    return model, torch.bernoulli(torch.full((8, 6), 0.4, dtype=torch.double))


def running_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}


def test_every_deterministic_layer_is_normalized_and_the_option_turns_it_off():
    model, _ = tiny()
    bn = [m for m in model.modules() if isinstance(m, BatchNorm)]
    # bottom-up: 5 and 4 units; top-down p(z1 | z2): 4; decoder p(x | z1): 5
    assert sorted(m.num_features for m in bn) == [4, 4, 5, 5]
    plain, _ = tiny(batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())


def test_eval_mode_is_a_fixed_map_training_mode_uses_the_batch():
    """In eval mode every deterministic network (bottom-up, top-down, decoder) maps an example the
    same whatever else is in the batch; in training mode it does not, and training-mode calls move
    the running statistics."""
    model, x = tiny()
    for _ in range(3):
        model.terms(x, 4)  # training mode: running statistics move off their initial values
    z2, z1 = torch.randn(8, 2, dtype=torch.double), torch.randn(8, 3, dtype=torch.double)
    nets = [(model.variational_params, x), (model.decoder_td[0], z2), (model.decoder.net, z1)]
    model.eval()
    for f, inp in nets:
        torch.testing.assert_close(f(inp[:2]), f(inp)[:2])
    model.train()
    for f, inp in nets:
        assert not torch.allclose(f(inp[:2]), f(inp)[:2])
    before = running_stats(model)
    model.variational_params(x)
    assert any(not torch.equal(before[n], b) for n, b in running_stats(model).items())


def test_measurements_leave_the_running_statistics_alone():
    """gradient_stats (in training mode: its draws normalize by the batch) restores the buffers;
    the evaluations (log-likelihood, gaps, active units) run in eval mode and never update them,
    and hand the training mode back."""
    model, x = tiny()
    model.terms(x, 2)
    before = running_stats(model)
    metrics.gradient_stats(model, x, "elbo", n=4)
    metrics.log_likelihood(model, x, k=8)
    metrics.gaps(model, x, k_eval=8, local_steps=3)
    metrics.active_units(model, x, n_samples=8)
    for n, b in running_stats(model).items():
        torch.testing.assert_close(b, before[n], rtol=0, atol=0)
    assert model.training and all(m.training for m in model.modules())
