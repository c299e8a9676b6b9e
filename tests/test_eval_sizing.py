"""Evaluation passes sized for the device (``chunk = 0``): the bytes a log-weight costs are
measured on the model, a pass holds about ``bench.passes.pass_bytes`` of tensors, an explicit
chunk is honoured, and the gaps, AIS and the validation ELBO follow the same rule."""

from __future__ import annotations

import math

import pytest
import torch

import variants
from bench import ais, metrics, passes, train
from bench.config import RunConfig


class KnownCost(torch.nn.Module):
    """``log_weights(x, k)``: a ``[k, B, 100]`` float32 tensor summed to ``[k, B]`` and added to a
    ``[B]`` term (408 bytes a log-weight), after a ``[B, 1000]`` "encoder" pass that does not grow with ``k``. Records the
    shape of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def log_weights(self, x, k=1, params=None):
        self.calls.append((k, x.shape[0]))
        h = torch.ones(x.shape[0], 1000)  # per example, not per log-weight
        return torch.ones(k, x.shape[0], 100).sum(-1) + h.sum(-1)


def test_allocated_bytes_counts_new_tensors_and_leaves_the_random_stream_alone():
    def fn():
        a = torch.empty(1000)  # 4000 bytes
        a.view(10, 100).add_(1)  # a view and an in-place op: nothing new
        torch.randn(250)  # 1000 bytes, and a draw from the global generator
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    assert passes.allocated_bytes(fn) == 5000
    torch.testing.assert_close(torch.rand(5), expected)  # the probe's draw is not seen


def test_a_pass_holds_the_cpu_budget_measured_per_log_weight():
    model, x = KnownCost(), torch.zeros(13, 2)
    per_lw = 100 * 4 + 4 + 4  # the [k, B, 100] tensor, its [k, B] sum and the sum's sum; the encoder cancels
    assert metrics.log_weight_chunk(model, x) == passes.CPU_PASS_BYTES // per_lw
    assert metrics.log_weight_chunk(model, x, chunk=123) == 123  # an explicit value is honoured
    probes = len(model.calls)
    assert metrics.log_weight_chunk(model, x) == passes.CPU_PASS_BYTES // per_lw and len(model.calls) == probes  # kept
    metrics.log_weight_chunk(model, torch.zeros(13, 3))  # another input shape: measured again
    assert len(model.calls) == probes + 3  # a first call, then the two measured ones


class CachedOnce(KnownCost):
    """:class:`KnownCost` plus a 4 MB tensor allocated at the first call only and kept (as a
    VampPrior's components are inside ``variants.priors.fixed``)."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = None

    def log_weights(self, x, k=1, params=None):
        if self.cache is None:
            self.cache = torch.ones(2**20)
        return super().log_weights(x, k, params)


def test_what_a_first_call_caches_is_not_taken_for_a_negative_cost_per_log_weight():
    """Measured as ``fn(3) - fn(1)``, a cache filled by ``fn(1)`` would come out of the difference
    (4 MB against 8 x 408 bytes: below the floor, a pass 6 times the budget here, thousands of times
    on a 784-pixel model); the first call is made before the measurement, so the chunk is the
    budget over 408 bytes, as without the cache."""
    assert metrics.log_weight_chunk(CachedOnce(), torch.zeros(13, 2)) == passes.CPU_PASS_BYTES // 408


@pytest.mark.parametrize("variant", ["hierarchical", "vanilla"])
def test_a_vampprior_held_fixed_sizes_passes_as_it_does_outside(variant):
    """Inside ``priors.fixed`` (log p(x), the test ELBO, AIS, the gaps) the first ``log p(z)``
    computes the VampPrior's components (an encoder pass over K = 500 pseudo-inputs of 784 pixels)
    and keeps them: the pass sizes must be those measured outside the block, where every call pays
    for them. (Hierarchical, 8-dimensional top latent: without the first call made before the
    measurement, 524,288 log-weights a pass instead of about 270: the suite's 17 GB log p(x).)"""
    from variants import priors

    def model():
        torch.manual_seed(0)
        m = variants.build(variant, x_shape=(784,), latent_dim=40, hidden=(200, 200))
        return priors.attach(m, "vamp", 500).eval()

    x = (torch.rand(8, 784) < 0.3).float()
    held, free = model(), model()
    with priors.fixed(held):
        chunk = metrics.log_weight_chunk(held, x)
    with priors.fixed(held):
        draws = ais.draws_per_pass(held, x)
    assert chunk == metrics.log_weight_chunk(free, x)
    assert draws == ais.draws_per_pass(free, x)
    assert chunk < 1000 and draws < 1000  # the prior's [chunk, K, d] terms and the 784-pixel decoder counted


@pytest.mark.parametrize("k, chunk, split", [(1000, 1600, (1, 1000)), (50, 7, (1, 7)), (5, 100, (13, 5)), (5, 12, (2, 5))])
def test_an_examples_samples_stay_in_one_pass_first(k, chunk, split):
    """``log_weight_moments`` calls ``log_weights`` with at most ``chunk`` log-weights, all ``k``
    samples of an example together where they fit (an example's encoder pass is not repeated)."""
    model = KnownCost()
    metrics.log_weight_moments(model, torch.zeros(13, 2), k, chunk=chunk)
    assert max(kk * b for kk, b in model.calls) <= max(chunk, 1)
    assert (model.calls[0][1], model.calls[0][0]) == split
    assert sum(kk * b for kk, b in model.calls) == 13 * k


def test_the_default_chunk_of_a_784_pixel_model_is_bytes_not_a_count():
    """A 784-pixel decoder (Fashion-MNIST's shape, 512-512 ReLU, 32 latents): a log-weight costs
    its 784 logits and the elementwise terms of log p(x | z) (several 784-float tensors) plus the
    hidden activations, so at least 4 (784 * 3 + 2 * 512) bytes; the default chunk is the budget
    over that, not a fixed number of log-weights, and every pass stays within the budget."""
    model = variants.build("vanilla", x_shape=(784,), latent_dim=32, hidden=(512, 512), activation="relu").eval()
    x = (torch.rand(8, 784) > 0.5).float()
    chunk = metrics.log_weight_chunk(model, x)
    per_lw = passes.CPU_PASS_BYTES / chunk
    assert 4 * (784 * 3 + 2 * 512) <= per_lw <= 4 * (784 * 12 + 4 * 512), per_lw
    small = variants.build("vanilla", x_shape=(64,), latent_dim=8, hidden=(64, 64)).eval()
    assert metrics.log_weight_chunk(small, x[:, :64]) > 5 * chunk  # a smaller model: more log-weights a pass
    sizes = []
    real = model.log_weights
    model.log_weights = lambda xb, k, params=None: sizes.append(k * xb.shape[0]) or real(xb, k, params=params)
    metrics.log_likelihood(model, x, k=300)
    assert max(sizes) <= chunk


def test_on_cuda_a_pass_takes_a_share_of_the_free_memory(monkeypatch):
    """Mocked GPU: a quarter of the free memory divided among the runs sharing the GPU
    (``passes.set_gpu_share``, which a worker calls with its job's share), at most 4 GiB."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (64 * 2**30, 80 * 2**30))
    monkeypatch.setattr(passes, "_GPU_SHARE", [1])
    assert passes.pass_bytes("cuda") == passes.CUDA_PASS_MAX_BYTES  # 16 GiB, capped
    passes.set_gpu_share(8)
    assert passes.pass_bytes("cuda") == 2 * 2**30  # 64 GiB / 4 / 8
    assert passes.pass_bytes("cpu") == passes.CPU_PASS_BYTES


def test_ais_sizes_its_passes_by_a_decoder_pass_with_its_gradient():
    """AIS's unit is a latent draw of an HMC energy (decoder forward and backward): more bytes
    than a log-weight without gradients, so fewer draws a pass; an explicit chunk is honoured."""
    model = variants.build("vanilla", x_shape=(784,), latent_dim=32, hidden=(512, 512), activation="relu").eval()
    x = (torch.rand(6, 784) > 0.5).float()
    draws = ais.draws_per_pass(model, x)
    assert 1 <= draws < metrics.log_weight_chunk(model, x)
    assert ais.draws_per_pass(model, x, 77) == 77


def test_the_gaps_and_the_validation_elbo_use_the_config_chunk(monkeypatch):
    """``eval_chunk`` reaches every evaluation: a run with ``eval_chunk = 40`` never evaluates
    more than 40 log-weights in one call of ``log_weights`` (the gaps, ``test/log_px``), and the
    validation ELBO takes ``40 // val_k`` examples a pass."""
    from bench import data

    cfg = RunConfig(epochs=1, train_size=100, test_size=30, hidden=[8], latent_dim=2, batch_size=50, val_k=4, eval_k=20,
                    eval_chunk=40, gap_size=10, gap_steps=2, gap_k=20, grad_draws=2, grad_batch=8, objective="elbo", k=1)
    sizes, terms = [], []
    real_lw, real_terms = variants.get("vanilla").log_weights, variants.get("vanilla").terms

    def log_weights(self, x, k=1, params=None):
        sizes.append(k * x.shape[0])
        return real_lw(self, x, k, params)

    def spy_terms(self, x, k=1, **kw):
        if not self.training and not torch.is_grad_enabled():  # the streamed evaluations, not the gaps' local fit
            terms.append(k * x.shape[0])
        return real_terms(self, x, k, **kw)

    monkeypatch.setattr(variants.get("vanilla"), "log_weights", log_weights)
    monkeypatch.setattr(variants.get("vanilla"), "terms", spy_terms)
    out = train.run(cfg, data.load("digits"), lambda m, s: None)
    assert math.isfinite(out.final["test/log_px"]) and math.isfinite(out.final["gap/log_px"])
    assert sizes and max(sizes) <= 40
    assert terms and max(terms) <= 40
