"""The training loop: one function, read top to bottom (nanoGPT's ``train.py`` is the model).

``run(cfg, data, log)`` builds the variant, trains it with Adam on the objective's surrogate,
evaluates every epoch and at the end, and hands every number to ``log(metrics, step)``; it knows
nothing of MLflow. What it logs (nats per example, higher is better unless named otherwise):

per epoch (step = epoch)  train/loss (= -training bound, averaged over the epoch's batches),
                          val/elbo, train/examples_per_s; gap/* and grad/* at scheduled epochs
final                     test/elbo, test/recon, test/kl, test/log_px, test/active_units, gap/*,
                          test/exact_log_px (variants with exact_log_marginal: the oracle),
                          grad/*, perf/train_examples_per_s, perf/eval_examples_per_s,
                          perf/train_seconds, perf/peak_mem_mb

The logged training value is the bound the objective estimates (``Estimate.value``), never the
surrogate. Host-device synchronization happens once per epoch (``.item()`` on the summed bound)
and around the timed sections; nothing syncs per step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

import variants
from bench import checkpoint, metrics, objectives
from bench.config import RunConfig
from bench.data import Dataset
from bench.errors import ConfigError, NonFiniteLoss

LogFn = Callable[[dict[str, float], int | None], None]
# checkpoint(epoch, state): called after every epoch is logged; ``state()`` builds the checkpoint
# (bench.checkpoint.capture), so a hook that skips an epoch pays nothing for it
CheckpointFn = Callable[[int, Callable[[], dict]], None]


def burda_lr(lr: float, epoch: int) -> float:
    """Burda et al. (2016) sec. 5: 3^i epochs at ``lr * 10^(-i/7)`` for i = 0, 1, ..., 7
    (3,280 epochs in all; later epochs stay at i = 7). ``epoch`` counts from 1."""
    i, seen = 0, 1
    while epoch > seen and i < 7:
        i += 1
        seen += 3**i
    return lr * 10 ** (-i / 7)


LR_SCHEDULES: dict[str, Callable[[float, int], float]] = {
    "constant": lambda lr, epoch: lr,
    "burda": burda_lr,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use device=auto or cpu")
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(cfg: RunConfig, data: Dataset) -> nn.Module:
    try:
        return variants.build(
            cfg.variant,
            x_shape=data.x_shape,
            latent_dim=cfg.latent_dim,
            hidden=tuple(cfg.hidden),
            likelihood=data.likelihood,
            activation=cfg.activation,
            **cfg.variant_options,
        )
    except (variants.VariantConfigError, ValueError) as e:
        raise ConfigError(f"run {cfg.run_name}: {e}") from None


def train_step(model: nn.Module, objective, optimizer: torch.optim.Optimizer, x: Tensor, k: int) -> Tensor:
    """One optimizer step on a batch ``x: [B, D]``; returns the bound summed over the batch
    (detached, on the device: no host sync)."""
    est = objective(model, x, k)
    optimizer.zero_grad(set_to_none=True)
    est.surrogate.backward()
    optimizer.step()
    return est.value.sum()


@torch.no_grad()
def evaluate_elbo(model: nn.Module, x: Tensor, k: int, batch: int = 1000) -> dict[str, float]:
    """ELBO = recon - KL on ``x`` with ``k`` samples of q per example (the closed-form KL where
    the variant gives one). Returns means over examples."""
    recon = kl = 0.0
    for i in range(0, len(x), batch):
        t = model.terms(x[i : i + batch], k, mode=model.eval_mode)
        kl_b = t.kl if t.kl is not None else (t.log_qz - t.log_pz).mean(0)
        recon += t.log_px_z.mean(0).sum().item()
        kl += kl_b.sum().item()
    n = len(x)
    return {"elbo": (recon - kl) / n, "recon": recon / n, "kl": kl / n}


@dataclass
class RunResult:
    model: nn.Module
    final: dict[str, float] = field(default_factory=dict)


def measure(model, cfg: RunConfig, data: Dataset, grad_x: Tensor, epoch: int, final: bool) -> dict[str, float]:
    """The scheduled measurements: the gap decomposition on a fixed test subset, and gradient
    variance/SNR of the run's objective (and of ``grad_objectives`` x ``grad_ks``) on a fixed
    training batch, all at the current parameters."""
    out: dict[str, float] = {}
    if final or epoch in cfg.gap_epochs:
        g = metrics.gaps(
            model, data.test[: cfg.gap_size], k_eval=cfg.gap_k or cfg.eval_k, local_steps=cfg.gap_steps
        )
        out.update({f"gap/{key}": v.mean().item() for key, v in g.items()})
    if final or epoch in cfg.grad_epochs:
        own = metrics.gradient_stats(model, grad_x, objectives.build(cfg.objective), n=cfg.grad_draws, k=cfg.k)
        out.update({f"grad/{key}": v for key, v in own.items()})
        vcls = type(model)
        for name in cfg.grad_objectives:
            if not objectives.applies_to(name, vcls):
                continue
            for k in cfg.grad_ks or [cfg.k]:
                s = metrics.gradient_stats(model, grad_x, objectives.build(name), n=cfg.grad_draws, k=k)
                out.update({f"grad/{name}/k{k}/{key}": v for key, v in s.items()})
    return out


def run(cfg: RunConfig, data: Dataset, log: LogFn, progress: Callable[[str], None] = lambda s: None,
        checkpoint_fn: CheckpointFn | None = None, resume: dict | None = None) -> RunResult:
    """Train and evaluate one run. ``resume``: a checkpoint of this run (``bench.checkpoint``);
    training continues after its epoch with every generator where it was, so the numbers are
    those of the uninterrupted run."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = build_model(cfg, data).to(device)
    objective = objectives.build(cfg.objective)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    train = data.train[: cfg.train_size] if cfg.train_size else data.train
    test = data.test[: cfg.test_size] if cfg.test_size else data.test
    n, bs = len(train), cfg.batch_size
    grad_x = data.train_epoch(torch.Generator(device=device).manual_seed(0))[: cfg.grad_batch]
    metrics.reset_peak_memory(device)

    done, step, (timed_s, timed_n, train_s) = 0, 0, (0.0, 0, 0.0)
    if resume is not None:  # after the built model's initialization: the checkpoint overwrites it
        done, step, (timed_s, timed_n, train_s) = checkpoint.restore(resume, model, optimizer, gen)
    for epoch in range(done + 1, cfg.epochs + 1):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = LR_SCHEDULES[cfg.lr_schedule](cfg.lr, epoch)
        x_epoch = data.train_epoch(gen)[: cfg.train_size or None]
        perm = torch.randperm(n, device=device, generator=gen)
        total = torch.zeros((), device=device)
        sync(device)
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            model.on_train_step(step)
            total += train_step(model, objective, optimizer, x_epoch[perm[i : i + bs]], cfg.k)
            step += 1
        sync(device)
        dt = time.perf_counter() - t0
        train_s += dt
        if epoch > 1 or cfg.epochs == 1:  # epoch 1 carries the warm-up (allocator, kernels, caches)
            timed_s, timed_n = timed_s + dt, timed_n + n
        train_bound = total.item() / n  # the one host sync of the epoch
        if not math.isfinite(train_bound):
            raise NonFiniteLoss(
                f"run {cfg.run_name}: the training bound is {train_bound} at epoch {epoch} "
                f"(try a smaller lr than {cfg.lr}); the epochs logged so far are kept"
            )
        model.eval()
        val = evaluate_elbo(model, data.val, cfg.val_k)
        row = {"train/loss": -train_bound, "val/elbo": val["elbo"], "train/examples_per_s": n / dt}
        if epoch < cfg.epochs:
            row.update(measure(model, cfg, data, grad_x, epoch, final=False))
        log(row, epoch)
        progress(f"epoch {epoch:>3}/{cfg.epochs}  train {train_bound:9.3f}  val/elbo {val['elbo']:9.3f}  {n / dt:10,.0f} ex/s")
        if checkpoint_fn is not None:  # after the log: killed in between, the resumed run redoes
            # this epoch and its logger drops the steps the run already has (bench.worker)
            checkpoint_fn(epoch, lambda: checkpoint.capture(epoch, step, model, optimizer, gen, (timed_s, timed_n, train_s)))

    # -- final evaluation (not part of the training time) ----------------------------------------
    model.eval()
    final: dict[str, float] = {}
    t = evaluate_elbo(model, test, cfg.val_k)
    final.update({"test/elbo": t["elbo"], "test/recon": t["recon"], "test/kl": t["kl"]})
    sync(device)
    t0 = time.perf_counter()
    log_px = metrics.log_likelihood(model, test, k=cfg.eval_k, chunk=cfg.eval_chunk)
    sync(device)
    eval_s = time.perf_counter() - t0
    final["test/log_px"] = log_px.mean().item()
    if hasattr(model, "exact_log_marginal"):  # the oracle: the estimate's error is visible
        with torch.no_grad():
            final["test/exact_log_px"] = model.exact_log_marginal(test).mean().item()
    final["test/active_units"] = float(metrics.active_units(model, test))
    final.update(measure(model, cfg, data, grad_x, cfg.epochs, final=True))
    final.update(
        {
            "perf/train_examples_per_s": timed_n / timed_s,
            "perf/eval_examples_per_s": len(test) / eval_s,
            "perf/train_seconds": train_s,
            "perf/peak_mem_mb": metrics.peak_memory_mb(device),
        }
    )
    bad = sorted(k for k, v in final.items() if not math.isfinite(v) and not k.startswith("grad/"))
    log(final, cfg.epochs)
    if bad:
        raise NonFiniteLoss(f"run {cfg.run_name}: non-finite final metric(s) {', '.join(bad)}")
    progress(f"test/elbo {final['test/elbo']:.3f}  test/log_px {final['test/log_px']:.3f}  ({len(test) / eval_s:,.0f} eval ex/s)")
    return RunResult(model=model, final=final)
