"""Benchmarks, deselected from the default run: ``nox -s perf``, i.e. ``pytest -m perf``.

1. **Side by side with hand-written PyTorch** (what a researcher would write for the same model:
   encoder 784-512-512-64, decoder 32-512-512-784, ReLU, Bernoulli likelihood, batch 128, Adam
   1e-3 with torch's defaults, dynamically binarized Fashion-MNIST, 2 threads on CPU):

   * the training step: the loop body of ``bench.train.run`` (``make_optimizer``, ``make_step``,
     the model's step hook, the KL warm-up weight, the batch gather) with ``vanilla`` and the
     ``elbo`` objective, against :class:`Reference` (reparameterized sample, closed-form KL,
     ``binary_cross_entropy_with_logits``, ``torch.optim.Adam(params, lr=1e-3)``), blocks of
     150 steps; beside it, for information, the same reference with fused Adam;
   * whole epochs: the suite's own ``perf/train_examples_per_s`` from ``bench.train.run`` against
     a hand-written epoch loop (3 epochs of 20,000 images, the first untimed, each side's own
     figure, 5 pairs);
   * ``log p(x)`` with k = 1000 on 1,000 test images: ``bench.metrics.log_likelihood`` with its
     defaults against :func:`reference_log_px` (10 images x k per decoder call).

   Each pair times the harness and the reference back to back, alternating which goes first, so
   that slow drifts of a shared machine cancel; the ratio harness / reference is printed as the
   median over the pairs with its spread (min, max), with the load average. Targets (asserted):
   training step and epochs >= 1.0x, ``log p(x)`` >= 1.0x and, on CPU, >= 2x pythae's ``get_nll`` on this machine
   type (48-55 images/s, so >= 110 images/s). Timing: ``bench.metrics.time_step`` (CUDA events
   after a synchronize on a GPU, ``perf_counter`` on CPU).

2. **Micro-benchmarks** (pytest-benchmark) of every registered variant on digits-sized inputs
   (64 dimensions, batch 128): its training step (``bench.step.train_step`` with its default
   objective and k) and ``bench.metrics.log_likelihood``. CPU threads: ``PERF_THREADS`` (default 1:
   on shared cores multi-threaded eager torch slows down many times over when another process is
   busy). Device and threads go to ``benchmark.extra_info`` with the examples per second.

The side-by-side thread count is ``PERF_PAIR_THREADS`` (default 2, the figures' setting).
"""

from __future__ import annotations

import math
import os
import statistics
import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import variants
from bench import data, metrics, objectives, schedules, train
from bench import step as steps
from bench.config import RunConfig
from bench.errors import DatasetUnavailable
from bench.step import train_step

pytestmark = pytest.mark.perf

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
D, BATCH, EVAL_B, EVAL_K = 64, 128, 128, 100


@pytest.fixture(autouse=True)
def _threads(request):
    n = torch.get_num_threads()
    if DEVICE.type == "cpu":
        pair = request.node.name.startswith("test_side_by_side")
        torch.set_num_threads(int(os.environ.get("PERF_PAIR_THREADS" if pair else "PERF_THREADS", "2" if pair else "1")))
    yield
    torch.set_num_threads(n)


# -- 1. side by side with hand-written PyTorch ---------------------------------------------------------
HIDDEN, LATENT, FM_BATCH, LR = (512, 512), 32, 128, 1e-3
TRAIN_STEPS, TRAIN_PAIRS = 150, 7
EPOCH_IMAGES, EPOCHS, EPOCH_PAIRS = 20_000, 3, 5
LOGPX_IMAGES, LOGPX_K, LOGPX_PAIRS, IMAGES_PER_CALL = 1000, 1000, 5, 10
PYTHAE_IMAGES_PER_S = 55.0  # pythae's get_nll, k = 1000, the best of 48-55 measured on this machine type


class Reference(nn.Module):
    """The VAE as one writes it by hand: ``-ELBO`` per batch with a reparameterized sample, the
    closed-form Gaussian KL and ``binary_cross_entropy_with_logits``."""

    def __init__(self, x_dim: int = 784) -> None:
        super().__init__()
        h1, h2 = HIDDEN
        self.enc = nn.Sequential(nn.Linear(x_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 2 * LATENT))
        self.dec = nn.Sequential(nn.Linear(LATENT, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU(), nn.Linear(h1, x_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self.enc(x).chunk(2, -1)
        z = mu + log_sigma.exp() * torch.randn_like(mu)
        rec = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        kl = 0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 1 - 2 * log_sigma).sum(-1)
        return (rec + kl).mean()


@torch.no_grad()
def reference_log_px(model: Reference, x: torch.Tensor, k: int, per_call: int = IMAGES_PER_CALL) -> torch.Tensor:
    """The IWAE estimate of ``log p(x)`` as one writes it by hand: ``per_call`` images x ``k``
    samples per decoder call, ``log w = log p(x | z) + log N(z; 0, I) - log N(z; mu, sigma)``."""
    out, c = [], 0.5 * math.log(2 * math.pi)
    for i in range(0, len(x), per_call):
        xb = x[i : i + per_call]
        mu, log_sigma = model.enc(xb).chunk(2, -1)
        eps = torch.randn(k, *mu.shape, device=x.device)
        z = mu + log_sigma.exp() * eps
        logits = model.dec(z)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
        log_pz = (-0.5 * z.pow(2) - c).sum(-1)
        log_qz = (-0.5 * eps.pow(2) - log_sigma - c).sum(-1)
        out.append(torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(k))
    return torch.cat(out)


def _load() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def _pairs(first, second, n: int, *more) -> list[list[float]]:
    """Seconds of ``first()``, ``second()`` (and ``more``) in ``n`` rounds, the order alternating
    between rounds (``bench.metrics.time_step``, one call each, after one untimed call)."""
    fns = [first, second, *more]
    for fn in fns:
        fn()
    times = [[0.0] * n for _ in fns]
    for r in range(n):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for j in order:
            times[j][r] = metrics.time_step(fns[j], n_warmup=0, n_iters=1, device=DEVICE)
    return times


def _ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Throughput ratio per pair (``den`` seconds over ``num`` seconds): (median, min, max)."""
    r = [d / t for t, d in zip(num, den)]
    return statistics.median(r), min(r), max(r)


def _say(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}", flush=True)


@pytest.fixture(scope="module")
def fashion():
    try:
        ds = data.load("fashion-mnist", device=str(DEVICE))
    except DatasetUnavailable as e:
        pytest.skip(f"Fashion-MNIST is not available here ({e})")
    return ds


def test_side_by_side_training_step(fashion, capsys):
    torch.manual_seed(0)
    cfg = RunConfig(variant="vanilla", objective="elbo", k=1, latent_dim=LATENT, hidden=list(HIDDEN), activation="relu",
                    batch_size=FM_BATCH, lr=LR)
    model = train.build_model(cfg, fashion).to(DEVICE).train()
    objective = objectives.build("elbo")
    optimizer = steps.make_optimizer(model.parameters(), cfg, DEVICE)
    step_fn = steps.make_step(cfg, model, objective, optimizer, None, DEVICE)
    ref = Reference().to(DEVICE)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=LR)
    ref_fused = Reference().to(DEVICE)
    fused_opt = torch.optim.Adam(ref_fused.parameters(), lr=LR, fused=True)

    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x_epoch = fashion.train_epoch(gen)
    perm = torch.randperm(len(x_epoch), device=DEVICE, generator=gen)
    n_per_epoch = math.ceil(len(x_epoch) / FM_BATCH)
    state = {"step": 0}

    def harness():  # the loop body of bench.train.run
        total = torch.zeros((), device=DEVICE)
        for i in range(TRAIN_STEPS):
            model.on_train_step(state["step"])
            beta = schedules.kl_weight(state["step"], cfg.kl_warmup_epochs, n_per_epoch)
            total += step_fn(x_epoch[perm[i * FM_BATCH : (i + 1) * FM_BATCH]], beta)
            state["step"] += 1
        return total

    def by_hand(net, opt):
        def block():
            total = torch.zeros((), device=DEVICE)
            for i in range(TRAIN_STEPS):
                xb = x_epoch[perm[i * FM_BATCH : (i + 1) * FM_BATCH]]
                opt.zero_grad(set_to_none=True)
                loss = net(xb)
                loss.backward()
                opt.step()
                total += loss.detach()
            return total
        return block

    h, r, rf = _pairs(harness, by_hand(ref, ref_opt), TRAIN_PAIRS, by_hand(ref_fused, fused_opt))
    med, lo, hi = _ratio(h, r)
    fmed, flo, fhi = _ratio(h, rf)
    ex = TRAIN_STEPS * FM_BATCH
    _say(capsys, f"training step ({DEVICE}, {torch.get_num_threads()} threads): harness {ex / statistics.median(h):,.0f} "
                 f"ex/s, reference {ex / statistics.median(r):,.0f} ex/s; harness / reference {med:.3f} "
                 f"(min {lo:.3f}, max {hi:.3f}) over {TRAIN_PAIRS} alternating pairs of {TRAIN_STEPS} steps; "
                 f"against the reference with fused Adam {fmed:.3f} (min {flo:.3f}, max {fhi:.3f}); {_load()}")
    assert med >= 1.0, f"the harness's training step is slower than hand-written PyTorch: {med:.3f}x ({_load()})"


def test_side_by_side_training_epochs(fashion, capsys):
    """The suite's own figure, ``perf/train_examples_per_s`` of ``bench.train.run`` (epochs 2 and 3
    of 3 on 20,000 training images; epoch 1, the warm-up, and the evaluations excluded), against
    the epoch loop one writes by hand: a fresh binarization and permutation per epoch (untimed, as
    in the harness), ``zero_grad``, loss, ``backward``, ``Adam.step`` per batch, one ``.item()``
    per epoch and a validation pass between epochs, timed over the same epochs. What the epoch adds
    to the step (data order, gathers, the KL-weight and step hooks, the host sync, the heap left by
    the evaluations between epochs) shows here and not in the step-level pair above."""
    cfg = RunConfig(variant="vanilla", objective="elbo", dataset="fashion-mnist", k=1, latent_dim=LATENT,
                    hidden=list(HIDDEN), activation="relu", batch_size=FM_BATCH, lr=LR, epochs=EPOCHS,
                    train_size=EPOCH_IMAGES, val_k=1, test_size=16, eval_k=1, gap_size=2, gap_steps=1,
                    grad_draws=2, grad_batch=2, device=DEVICE.type)
    out = {}

    def harness():
        out["harness"] = train.run(cfg, fashion, lambda row, step: None).final["perf/train_examples_per_s"]

    def by_hand():
        torch.manual_seed(0)
        net = Reference().to(DEVICE)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        xs, timed_s = fashion.train[:EPOCH_IMAGES], 0.0
        for epoch in range(1, EPOCHS + 1):
            x_epoch = torch.bernoulli(xs, generator=gen)
            perm = torch.randperm(len(xs), device=DEVICE, generator=gen)
            total = torch.zeros((), device=DEVICE)
            train.sync(DEVICE)
            t0 = time.perf_counter()
            for i in range(0, len(xs), FM_BATCH):
                opt.zero_grad(set_to_none=True)
                loss = net(x_epoch[perm[i : i + FM_BATCH]])
                loss.backward()
                opt.step()
                total += loss.detach()
            train.sync(DEVICE)
            if epoch > 1:
                timed_s += time.perf_counter() - t0
            total.item()
            with torch.no_grad():
                net.eval()(fashion.val[:1000])
            net.train()
        out["reference"] = (EPOCHS - 1) * len(xs) / timed_s

    h, r = [], []
    for p in range(EPOCH_PAIRS):  # each side reports its own examples/s; the order alternates
        for fn in (harness, by_hand) if p % 2 == 0 else (by_hand, harness):
            fn()
        h.append(out["harness"])
        r.append(out["reference"])
    ratios = [a / b for a, b in zip(h, r)]
    med = statistics.median(ratios)
    _say(capsys, f"training epochs ({DEVICE}, {torch.get_num_threads()} threads): perf/train_examples_per_s "
                 f"{statistics.median(h):,.0f}, hand-written epochs {statistics.median(r):,.0f} ex/s; harness / "
                 f"reference {med:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) over {EPOCH_PAIRS} alternating "
                 f"pairs of {EPOCHS} epochs of {EPOCH_IMAGES:,} images; {_load()}")
    assert med >= 1.0, f"the suite's training epochs are slower than a hand-written loop: {med:.3f}x ({_load()})"


def test_side_by_side_log_likelihood(fashion, capsys):
    torch.manual_seed(0)
    model = variants.build("vanilla", x_shape=fashion.x_shape, latent_dim=LATENT, hidden=HIDDEN, activation="relu").to(DEVICE)
    ref = Reference().to(DEVICE)
    ref.load_state_dict({"enc." + k[len("encoder."):] if k.startswith("encoder.") else "dec." + k[len("decoder.net."):]: v
                         for k, v in model.state_dict().items()})
    x = torch.bernoulli(fashion.test[:LOGPX_IMAGES], generator=torch.Generator(device=DEVICE).manual_seed(0))
    chunk = metrics.log_weight_chunk(model.eval(), x)
    out = {}

    def harness():
        out["harness"] = metrics.log_likelihood(model, x, k=LOGPX_K)

    def by_hand():
        out["reference"] = reference_log_px(ref.eval(), x, LOGPX_K)

    h, r = _pairs(harness, by_hand, LOGPX_PAIRS)
    med, lo, hi = _ratio(h, r)
    ips = len(x) / statistics.median(h)
    _say(capsys, f"log p(x), k = {LOGPX_K} on {len(x)} images ({DEVICE}, {torch.get_num_threads()} threads): harness "
                 f"{ips:,.1f} images/s ({chunk} log-weights a pass), reference {len(x) / statistics.median(r):,.1f} "
                 f"images/s ({IMAGES_PER_CALL} images x k a call); harness / reference {med:.3f} (min {lo:.3f}, max "
                 f"{hi:.3f}) over {LOGPX_PAIRS} alternating pairs; {ips / PYTHAE_IMAGES_PER_S:.2f}x pythae's "
                 f"{PYTHAE_IMAGES_PER_S:.0f} images/s; {_load()}")
    # the same model and the same estimator: the two estimates agree up to Monte Carlo noise
    assert abs((out["harness"] - out["reference"]).mean().item()) < 1.0
    assert med >= 1.0, f"log p(x) is slower than the hand-written loop: {med:.3f}x ({_load()})"
    if DEVICE.type == "cpu":
        assert ips >= 2 * PYTHAE_IMAGES_PER_S, f"{ips:.1f} images/s, under 2x pythae's {PYTHAE_IMAGES_PER_S} ({_load()})"


# -- 2. micro-benchmarks of every variant -------------------------------------------------------------------
def build(name: str) -> torch.nn.Module:
    options = {"likelihood": "gaussian"} if name == "linear-gaussian" else {}
    return variants.build(name, x_shape=(D,), **options).to(DEVICE)


def digits_like(model, n: int) -> torch.Tensor:
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
    optimizer = steps.make_optimizer(model.parameters(), RunConfig(), DEVICE)
    own = objective.to(DEVICE).optimizer(1e-3) if isinstance(objective, nn.Module) else None
    x = digits_like(model, BATCH)
    record(benchmark, BATCH)
    bound = benchmark.pedantic(
        synchronized(lambda: train_step(model, objective, optimizer, x, model.default_k, own)),
        rounds=20, iterations=1, warmup_rounds=3,
    )
    assert torch.isfinite(bound)
    throughput(benchmark, BATCH)


@pytest.mark.parametrize("name", variants.available())
def test_log_likelihood(benchmark, name):
    torch.manual_seed(0)
    model = build(name)
    x = digits_like(model, EVAL_B)
    record(benchmark, EVAL_B)
    benchmark.extra_info["k"] = EVAL_K
    ll = benchmark.pedantic(
        synchronized(lambda: metrics.log_likelihood(model, x, k=EVAL_K)),
        rounds=10, iterations=1, warmup_rounds=2,
    )
    assert ll.shape == (EVAL_B,) and bool(torch.isfinite(ll).all())
    throughput(benchmark, EVAL_B)


# -- 3. evaluation in bounded memory ----------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**10


def _append_style(model, x, k):
    """The pre-fix loop of ``log_weight_moments`` (one example a pass): a small result per pass kept
    in a list, the running accumulators re-created every pass."""
    lses, sums = [], []
    for i in range(len(x)):
        lw = model.log_weights(x[i : i + 1], k)
        lse, s = torch.logsumexp(lw, 0), lw.sum(0)
        lses.append(torch.logaddexp(lse, lse))
        sums.append(s + s)
    return torch.cat(lses), torch.cat(sums)


@pytest.mark.skipif(DEVICE.type != "cpu" or not os.path.exists("/proc/self/status"), reason="Linux RSS (CPU)")
def test_evaluation_rss_is_flat_across_passes():
    """Many passes of ``log_weight_moments`` (one example x k = 1000 log-weights a pass, a 784-512-256
    model of jang2017: ~30 MB transient a pass) leave the RSS flat: < 50 MB above its level a quarter of the way
    through. Power check: the old loop, which kept a small tensor per pass between the large ones,
    grows glibc's heap (~2.7 MB a pass measured on jang2017) past that margin in the same process."""
    torch.manual_seed(0)
    model = variants.build("gumbel-softmax", x_shape=(784,), latent_dim=0, hidden=(512, 256), likelihood="bernoulli",
                           activation="relu", n_latent=20, n_classes=10).eval()  # the jang2017 model
    x = torch.rand(200, 784).bernoulli()
    rss = []
    for i in range(0, len(x), 50):
        metrics.log_weight_moments(model, x[i : i + 50], 1000, chunk=1000)
        rss.append(_rss_mb())
    growth = rss[-1] - rss[0]
    with torch.no_grad():
        before = _rss_mb()
        _append_style(model, x, 1000)
        old_growth = _rss_mb() - before
    print(f"\nRSS after 50/100/150/200 passes: {[round(r) for r in rss]} MB (growth {growth:.1f} MB); "
          f"the append-style loop grew {old_growth:.1f} MB over 200 passes")
    assert growth < 50
    assert old_growth > 50, "power check: the old loop no longer grows here; the check above proves nothing"
