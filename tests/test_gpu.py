"""The GPU path. On any machine, with the GPU mocked: ``--runs-per-gpu 8`` plans 8 runs at once on
one device, each worker pinned to it and told it shares it. On a machine with CUDA (skipped
elsewhere, with the reason): the captured (CUDA graph) and compiled steps against eager, no
device synchronization in a step, CUDA-event timing, and the evaluations' memory share."""

from __future__ import annotations

import os

import pytest
import torch

import variants
from bench import metrics, objectives, passes
from bench import step as steps
from bench.config import RunConfig
from bench.run import executors, plan


def test_runs_per_gpu_8_plans_8_concurrent_runs_on_one_gpu(monkeypatch):
    """8 seeds of one config, ``--jobs auto --runs-per-gpu 8`` on a machine with one (mocked) GPU:
    8 worker slots, all on GPU 0, every run on ``cuda``; a worker's environment pins it to its GPU
    and its jobs say that 8 runs share it (``Job.gpu_share``, by which its evaluations size their
    memory, ``bench.passes.pass_bytes``)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(executors, "start_fork_server", lambda: None)  # no processes: the plan only
    opts = plan.Options(suite="smoke", set=["variants=vanilla", "seeds=0,1,2,3,4,5,6,7"], jobs="auto", runs_per_gpu=8)
    _, planned, _ = plan.plan(opts)
    ex = executors.make_executor(opts, planned, lambda *a: None)
    assert isinstance(ex, executors.LocalProcesses) and ex.capacity == 8
    assert [s.gpu for s in ex.slots] == ["0"] * 8 and ex.runs_per_gpu == 8
    assert len(planned) == 8 and {p.device for p in planned} == {"cuda"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test
    executors.pin_gpu(ex.slots[3].gpu)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    # with --runs-per-gpu 4 on two GPUs: 4 on each
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    opts.runs_per_gpu = 4
    ex = executors.make_executor(opts, planned, lambda *a: None)
    assert [s.gpu for s in ex.slots] == ["0"] * 4 + ["1"] * 4


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEV = torch.device("cuda")


def _trajectory(mode: str, variant: str, objective: str, seed: int = 1, steps: int = 12):
    """``steps`` steps of ``mode`` from fixed weights: full and partial batches, half of them under
    a KL warm-up where the objective has one. (bounds [steps], parameters flat)."""
    torch.manual_seed(0)
    model = variants.build(variant, x_shape=(64,), latent_dim=4, hidden=(32,)).to(DEV)
    x = (torch.rand(48, 64, device=DEV) > 0.5).float()
    warm = objectives.spec(objective).warmup
    cfg = RunConfig(variant=variant, objective=objective, k=2, step_mode=mode, device="cuda")
    opt = steps.make_optimizer(model.parameters(), cfg, DEV)
    step = steps.make_step(cfg, model, objectives.build(objective), opt, None, DEV)
    torch.manual_seed(seed)
    bounds = []
    for i in range(steps):
        model.on_train_step(i)
        xb = x[:32] if i % 3 else x[32:]
        bounds.append(step(xb, 0.5 if warm and i < steps // 2 else None))
    return torch.stack(bounds).detach(), torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@cuda
@pytest.mark.parametrize("variant, objective", [("vanilla", "elbo"), ("iwae", "dreg"), ("gumbel-softmax", "gumbel-softmax")])
@pytest.mark.parametrize("mode", ["cuda-graph", "compile"])
def test_captured_and_compiled_steps_equal_eager_on_the_gpu(mode, variant, objective):
    """Same weights, same seed: the bounds within 1e-4 relative, the parameters within 1e-5
    (float32; Adam moves each by ~1e-3 a step). Power check: eager from another seed differs."""
    eager = _trajectory("eager", variant, objective)
    other = _trajectory(mode, variant, objective)
    torch.testing.assert_close(other[0], eager[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(other[1], eager[1], rtol=0, atol=1e-5)
    reseeded = _trajectory("eager", variant, objective, seed=2)
    assert (reseeded[0] - eager[0]).abs().max() > 1e-2


@cuda
@pytest.mark.parametrize("variant, objective", [("vanilla", "elbo"), ("gumbel-softmax", "st-gumbel"), ("ladder", "elbo")])
def test_an_eager_step_does_not_synchronize_with_the_device(variant, objective):
    torch.manual_seed(0)
    model = variants.build(variant, x_shape=(64,), latent_dim=4, hidden=(32,)).to(DEV)
    x = (torch.rand(32, 64, device=DEV) > 0.5).float()
    cfg = RunConfig(variant=variant, objective=objective, k=2, device="cuda")
    opt = steps.make_optimizer(model.parameters(), cfg, DEV)
    obj = objectives.build(objective)
    steps.train_step(model, obj, opt, x, 2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            steps.train_step(model, obj, opt, x, 2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
def test_time_step_times_the_device_work_with_events():
    """A kernel that spins ~50 ms on the GPU returns at once on the host; CUDA events see it."""
    cycles = int(torch.cuda.get_device_properties(0).clock_rate * 1e3 * 0.05)  # clock_rate is in kHz
    t = metrics.time_step(lambda: torch.cuda._sleep(cycles), n_warmup=1, n_iters=3, device="cuda")
    assert 0.02 < t < 0.5


@cuda
def test_the_default_chunk_fits_the_gpus_free_memory():
    model = variants.build("vanilla", x_shape=(784,), latent_dim=32, hidden=(512, 512), activation="relu").to(DEV).eval()
    x = (torch.rand(8, 784, device=DEV) > 0.5).float()
    chunk = metrics.log_weight_chunk(model, x)
    assert 1 <= chunk <= passes.pass_bytes(DEV) // (4 * 784)  # a log-weight holds at least its 784 logits
    ll = metrics.log_likelihood(model, x, k=1000)
    assert ll.shape == (8,) and bool(torch.isfinite(ll).all())
