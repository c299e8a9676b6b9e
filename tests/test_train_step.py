"""The training step without a harness tax: the Gaussian latent's terms computed directly give
torch.distributions' numbers and gradients in every mode (and the terms nobody reads are not
computed), no step synchronizes with the host, the CPU's fused Adam follows the for-loop's
update, and the compiled step equals the eager one."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence
from torch.utils._python_dispatch import TorchDispatchMode

import variants
from bench import config, objectives, train
from bench import step as steps
from bench.config import RunConfig
from bench.errors import ConfigError
from bench.suite import load_suite
from variants.base import Lazy
from variants.densities import diag_gaussian


# -- the Gaussian latent's terms, computed directly ---------------------------------------------------
@pytest.mark.parametrize("mode", ["reparam", "stop-q", "score"])
def test_gaussian_terms_are_torch_distributions_numbers_and_gradients(mode):
    """vanilla (Gaussian q, N(0, I) prior, Bernoulli decoder) in float64: the same draw ``z`` as
    ``diag_gaussian(lam).rsample`` from the same seed, and ``log p(x | z)``, ``log p(z)``,
    ``log q(z | x)``, the KL equal to torch.distributions' within 1e-12, with the gradients of
    each mode: ``stop-q`` has no gradient of ``log q`` through ``lambda`` except via ``z``,
    ``score`` none through ``z``."""
    torch.manual_seed(0)
    model = variants.build("vanilla", x_shape=(12,), latent_dim=3, hidden=(8,)).double()
    x = (torch.rand(5, 12) > 0.5).double()
    params = list(model.parameters())

    torch.manual_seed(1)
    t = model.terms(x, 4, mode=mode)
    torch.manual_seed(1)
    lam = model.variational_params(x)
    q = diag_gaussian(lam)
    z = q.rsample((4,))
    z = z.detach() if mode == "score" else z
    q_eval = diag_gaussian(lam.detach()) if mode == "stop-q" else q
    prior = Independent(Normal(torch.zeros(3, dtype=torch.double), torch.ones(3, dtype=torch.double)), 1)
    want = {"log_px_z": model.decoder(z).log_prob(x), "log_pz": prior.log_prob(z), "log_qz": q_eval.log_prob(z)}
    if mode == "reparam":
        want["kl"] = kl_divergence(q, prior)
    else:
        assert t.kl is None
    for name, w in want.items():
        got = getattr(t, name)
        torch.testing.assert_close(got, w, rtol=0, atol=1e-12, msg=name)
        assert got.requires_grad == w.requires_grad, name
        if not w.requires_grad:  # log p(z) at a detached z ("score")
            continue
        g_got = torch.autograd.grad(got.sum(), params, allow_unused=True, retain_graph=True)
        g_want = torch.autograd.grad(w.sum(), params, allow_unused=True, retain_graph=True)
        for a, b in zip(g_got, g_want):
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


def test_the_elbo_step_reads_neither_log_pz_nor_log_qz():
    """With the closed-form KL the ELBO objective reads only log p(x | z) and the KL: log p(z) and
    log q(z | x) stay unevaluated (a :class:`Lazy`), also under a KL warm-up. The power check:
    the score-function estimator reads log q, which is then evaluated."""
    model = variants.build("vanilla", x_shape=(12,), latent_dim=3, hidden=(8,))
    x = (torch.rand(5, 12) > 0.5).float()
    seen = []
    real = model.terms

    def spy(*a, **kw):
        seen.append(real(*a, **kw))
        return seen[-1]

    model.terms = spy
    objectives.build("elbo")(model, x, 1)
    objectives.build("elbo")(model, x, 1, kl_weight=0.3)
    for t in seen:
        assert isinstance(t.__dict__["log_pz"], Lazy) and isinstance(t.__dict__["log_qz"], Lazy)
    seen.clear()
    objectives.build("score-function")(model, x, 2)
    assert not isinstance(seen[0].__dict__["log_qz"], Lazy)


def test_a_lazy_term_keeps_the_grad_mode_it_was_made_in():
    w = torch.ones(3, requires_grad=True)
    lazy = Lazy(torch.mul, w, 2.0)
    with torch.no_grad():
        assert lazy().requires_grad  # made with grad enabled: evaluated with it
    with torch.no_grad():
        lazy = Lazy(torch.mul, w, 2.0)
    assert not lazy().requires_grad


# -- no host synchronization in a step ----------------------------------------------------------------
# The ops that read a tensor's value back to the host (on a GPU each one waits for the device):
# .item() / bool() / float() (_local_scalar_dense), data-dependent shapes (nonzero, masked_select,
# unique), equal.
HOST_READS = ("_local_scalar_dense", "nonzero", "masked_select", "_unique", "unique_", "equal", "is_nonzero")


class HostReads(TorchDispatchMode):
    """Records every op that reads a tensor's value back to the host, except on ``allowed``
    tensors (the step counters of an optimizer that keeps them on the host)."""

    def __init__(self, allowed=()) -> None:
        super().__init__()
        self.allowed = {id(t) for t in allowed}
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        if any(h in name for h in HOST_READS) and not (args and id(args[0]) in self.allowed):
            self.hits.append(name)
        return func(*args, **(kwargs or {}))


def _steps(opt) -> list[torch.Tensor]:
    return [s["step"] for s in opt.state.values() if "step" in s] if opt is not None else []


def test_the_host_read_detector_sees_a_sync():
    """The power check: ``.item()``, ``F.one_hot`` (its range check) and a mask count are seen."""
    x = torch.arange(4)
    with HostReads() as h:
        x.sum().item()
        torch.nn.functional.one_hot(x, 5)
        x[x > 1]
    assert len(h.hits) >= 3, h.hits


def _cases():
    for name in variants.available():
        for o in objectives.applicable(variants.get(name)):
            yield name, o


@pytest.mark.parametrize("name, objective", list(_cases()))
def test_no_training_step_reads_a_tensor_back_to_the_host(name, objective):
    """Every variant with every objective that applies to it (the VQ-VAE with its EMA codebook,
    a KL warm-up where the objective has one): no op of ``bench.step.train_step`` (forward,
    backward, Adam) reads a value back to the host, so nothing in a step waits for a GPU. The
    step counters of a trainable objective's own (for-loop) Adam are host tensors on a GPU too."""
    torch.manual_seed(0)
    options = {"likelihood": "gaussian"} if name == "linear-gaussian" else {"ema": True} if name == "vq-vae" else {}
    model = variants.build(name, x_shape=(16,), latent_dim=4, hidden=(8,), **options).train()
    x = torch.randn(6, 16) if name == "linear-gaussian" else (torch.rand(6, 16) > 0.5).float()
    obj = objectives.build(objective)
    opt = steps.make_optimizer(model.parameters(), RunConfig(), torch.device("cpu"))
    own = obj.optimizer(1e-3) if isinstance(obj, torch.nn.Module) else None
    beta = 0.5 if objectives.spec(objective).warmup else None
    k = 3
    steps.train_step(model, obj, opt, x, k, own, beta)  # creates the optimizers' state
    model.on_train_step(1)
    with HostReads(allowed=_steps(own)) as h:
        steps.train_step(model, obj, opt, x, k, own, beta)
    assert not h.hits, f"{name}/{objective} reads back to the host: {h.hits}"


# -- Adam ---------------------------------------------------------------------------------------------
def test_the_cpu_optimizer_is_fused_adam_with_the_for_loop_update():
    """On CPU :func:`bench.step.make_optimizer` is Adam with ``fused=True``; 20 steps of it
    follow torch's default (for-loop) Adam within float64 rounding, with the config's lr and eps;
    the power check: another eps is visible."""
    torch.manual_seed(0)
    cfg = RunConfig(lr=1e-2, adam_eps=1e-4)
    ps = [torch.randn(7, 3, dtype=torch.double, requires_grad=True), torch.randn(5, dtype=torch.double, requires_grad=True)]
    runs = {}
    for label, make in {"fused": lambda p: steps.make_optimizer(p, cfg, torch.device("cpu")),
                        "for-loop": lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-4, foreach=False),
                        "other eps": lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-8, foreach=False)}.items():
        p = [q.detach().clone().requires_grad_(True) for q in ps]
        opt = make(p)
        if label == "fused":
            assert opt.defaults["fused"] is True
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            for q in p:
                q.grad = 1e-3 * torch.randn(q.shape, generator=g, dtype=q.dtype)
            opt.step()
        runs[label] = torch.cat([q.detach().reshape(-1) for q in p])
    torch.testing.assert_close(runs["fused"], runs["for-loop"], rtol=0, atol=1e-12)
    assert (runs["fused"] - runs["other eps"]).abs().max() > 1e-6


def test_set_lr_fills_a_tensor_learning_rate_in_place():
    p = torch.zeros(2, requires_grad=True)
    lr = torch.tensor(1e-3)
    opt = torch.optim.Adam([p], lr=0.1)
    opt.param_groups[0]["lr"] = lr
    steps.set_lr(opt, 5e-4)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(5e-4)
    opt = torch.optim.Adam([p], lr=0.1)
    steps.set_lr(opt, 5e-4)
    assert opt.param_groups[0]["lr"] == 5e-4


# -- step modes ---------------------------------------------------------------------------------------
def test_step_modes_refuse_what_they_cannot_run():
    """A trainable objective (its own optimizer; REBAR/RELAX a double backward) runs eagerly only,
    and a CUDA graph needs a GPU: one clear message each, at validation."""
    assert config.step_mode_unsupported(RunConfig(objective="elbo", step_mode="compile")) is None
    why = config.step_mode_unsupported(RunConfig(variant="bernoulli", objective="rebar", step_mode="compile"))
    assert "rebar" in why and "eager" in why
    assert "CUDA" in config.step_mode_unsupported(RunConfig(objective="elbo", step_mode="cuda-graph", device="cpu"))
    with pytest.raises(ConfigError, match="step_mode must be one of eager, compile, cuda-graph"):
        load_suite("smoke", config.parse_overrides(["step_mode=graph"]))
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        load_suite("smoke", config.parse_overrides(["step_mode=cuda-graph", "device=cpu"]))
    model = variants.build("vanilla", x_shape=(4,))
    cfg = RunConfig(objective="elbo", step_mode="cuda-graph", device="auto")
    with pytest.raises(ConfigError, match="this run is on cpu"):
        steps.make_step(cfg, model, objectives.build("elbo"), torch.optim.Adam(model.parameters()), None, torch.device("cpu"))


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")


@pytest.mark.slow
@pytest.mark.skipif(_compiler() is None and os.environ.get("CI") != "true",
                    reason="torch.compile on CPU needs a C++ compiler (g++, clang++ or $CXX); under CI=true it fails instead")
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_compiled_step_equals_the_eager_one(optimizer):
    """``step_mode = "compile"`` against ``"eager"`` from the same weights and seed, 8 steps of
    ``vanilla``/``elbo`` on batches of two shapes, under a KL warm-up (a tensor weight) and after
    it: the same bounds within 1e-5 relative and the same parameters within 1e-6 (float32; Adam
    moves each by ~1e-3 a step), with Adam and with SGD + momentum (the optimizer runs eagerly
    after the compiled forward and backward). The power check: the eager step from another seed
    differs by far more (the compiled step draws eager's noise)."""
    torch.manual_seed(0)
    base = variants.build("vanilla", x_shape=(16,), latent_dim=4, hidden=(16,))
    x = (torch.rand(24, 16) > 0.5).float()
    batches = [(x[:16], 0.5), (x[16:], 0.5), (x[:16], None), (x[16:], None)] * 2

    def trajectory(mode: str, seed: int):
        model = copy.deepcopy(base)
        cfg = RunConfig(objective="elbo", k=2, step_mode=mode, optimizer=optimizer,
                        **({"lr": 0.05, "momentum": 0.9} if optimizer == "sgd" else {}))
        opt = steps.make_optimizer(model.parameters(), cfg, torch.device("cpu"))
        step = steps.make_step(cfg, model, objectives.build("elbo"), opt, None, torch.device("cpu"))
        torch.manual_seed(seed)
        bounds = torch.stack([step(xb, beta) for xb, beta in batches])
        return bounds.detach(), torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    eager, compiled, other = trajectory("eager", 1), trajectory("compile", 1), trajectory("eager", 2)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(compiled[1], eager[1], rtol=0, atol=1e-6)
    assert (other[0] - eager[0]).abs().max() > 1e-2 and (other[1] - eager[1]).abs().max() > 1e-4


def test_a_cpu_run_flushes_subnormal_floats_to_zero():
    """Subnormal floats slow x86 arithmetic many times over, and Adam's moments of weights without
    gradient decay into them (measured on jang2017: 10.6k to 6.0k examples/s by the third epoch):
    a run on CPU turns on flush-to-zero. The power check: without it a subnormal survives a product."""
    from bench import data as datasets

    torch.set_flush_denormal(False)  # (earlier runs in this process turned it on, and a cast flushes too)
    subnormal = torch.tensor([1e-39])  # below float32's smallest normal, 1.18e-38
    assert (subnormal * 1.0).item() != 0
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals (no SSE3)")
    torch.set_flush_denormal(False)
    try:
        cfg = RunConfig(variant="vanilla", objective="elbo", k=1, dataset="digits", epochs=1, batch_size=100, latent_dim=3,
                        hidden=[16], train_size=200, test_size=30, val_k=2, eval_k=32, gap_size=10, gap_steps=5, gap_k=32,
                        grad_draws=4, grad_batch=8, device="cpu")
        train.run(cfg, datasets.load("digits"), lambda m, step: None)
        assert (subnormal * 1.0).item() == 0
    finally:
        torch.set_flush_denormal(False)
