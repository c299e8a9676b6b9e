"""Micro-benchmarks (pytest-benchmark), deselected from the default run: ``nox -s perf``, i.e.
``pytest -m perf --benchmark-only``. For every registered variant, on digits-sized inputs
(64 dimensions, batch 128): the training step the loop uses (``bench.train.train_step`` with the
variant's default objective and k) and the log-likelihood evaluation (``bench.metrics.log_likelihood``).

On CUDA every timed call ends with ``torch.cuda.synchronize`` (kernels are asynchronous: without
it the timer measures the launch). On CPU the torch thread count is set explicitly (environment
``PERF_THREADS``, default 1: on shared cores multi-threaded eager torch slows down many times over
when another process is busy). The device and the thread count are recorded in
``benchmark.extra_info`` together with the examples per second.
"""

from __future__ import annotations

import os

import pytest
import torch

import variants
from bench import metrics, objectives
from bench.train import train_step

pytestmark = pytest.mark.perf

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
D, BATCH, EVAL_B, EVAL_K = 64, 128, 128, 100


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    if DEVICE.type == "cpu":
        torch.set_num_threads(int(os.environ.get("PERF_THREADS", "1")))
    yield
    torch.set_num_threads(n)


def build(name: str) -> torch.nn.Module:
    options = {"likelihood": "gaussian"} if name == "linear-gaussian" else {}
    return variants.build(name, x_shape=(D,), **options).to(DEVICE)


def data(model, n: int) -> torch.Tensor:
    """Binary inputs for Bernoulli likelihoods, standard normal ones for Gaussian."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    if model.likelihood == "bernoulli":
        return (torch.rand(n, D, generator=g, device=DEVICE) > 0.5).float()
    return torch.randn(n, D, generator=g, device=DEVICE)


def synchronized(fn):
    def call():
        out = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        return out

    return call


def record(benchmark, examples: int) -> None:
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
        threads=torch.get_num_threads(),
        examples_per_call=examples,
    )


def throughput(benchmark, examples: int) -> None:
    if benchmark.stats is not None:  # absent with --benchmark-disable
        benchmark.extra_info["examples_per_s"] = examples / benchmark.stats.stats.mean


@pytest.mark.parametrize("name", variants.available())
def test_train_step(benchmark, name):
    torch.manual_seed(0)
    model = build(name).train()
    objective = objectives.build(model.default_objective)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = data(model, BATCH)
    record(benchmark, BATCH)
    bound = benchmark.pedantic(
        synchronized(lambda: train_step(model, objective, optimizer, x, model.default_k)),
        rounds=20, iterations=1, warmup_rounds=3,
    )
    assert torch.isfinite(bound)
    throughput(benchmark, BATCH)


@pytest.mark.parametrize("name", variants.available())
def test_log_likelihood(benchmark, name):
    torch.manual_seed(0)
    model = build(name)
    x = data(model, EVAL_B)
    record(benchmark, EVAL_B)
    benchmark.extra_info["k"] = EVAL_K
    ll = benchmark.pedantic(
        synchronized(lambda: metrics.log_likelihood(model, x, k=EVAL_K)),
        rounds=10, iterations=1, warmup_rounds=2,
    )
    assert ll.shape == (EVAL_B,) and bool(torch.isfinite(ll).all())
    throughput(benchmark, EVAL_B)
