"""The training loop: one function, read top to bottom (nanoGPT's ``train.py`` is the model).

``run(cfg, data, log)`` builds the variant, trains it with the config's optimizer (Adam by
default; ``bench.step.make_optimizer``) and learning-rate schedule on the objective's surrogate,
evaluates every epoch and at the end, and hands every number to ``log(metrics, step)``; it knows
nothing of MLflow. What it logs, and when, is the metric vocabulary (``bench.vocabulary``, the
reference docs/metrics.md): per epoch (step = epoch) ``train/loss`` (= -training bound, averaged over
the epoch's batches), ``val/elbo``, ``train/examples_per_s``, ``gap/*`` and ``grad/*`` at the
scheduled epochs; at the end (step = epochs) the ``test/*``, ``gap/*``, ``grad/*`` and ``perf/*``
metrics. A name the vocabulary does not know is a warning (:class:`UnregisteredMetric`, an error
under the test suite's strict warnings). The result carries every logged value
(:attr:`RunResult.history`), from which the worker draws the run's own figure.

The logged training value is the bound the objective estimates (``Estimate.value``), never the
surrogate, also during a KL warm-up (``kl_warmup_epochs``: only the surrogate is weighted). A
trainable objective (``bench.objectives.TrainableObjective``: NVIL, REBAR, RELAX) has its own
optimizer; each step the model's parameters get the estimator's gradient and the objective's
parameters their own training gradient (``bench.objectives.backward``). Measurements a variant
declares not applicable (``bench.config.skipped_measurements``) are skipped, not logged as NaN.
Host-device synchronization happens once per epoch (``.item()`` on the summed bound)
and around the timed sections; nothing syncs per step.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import variants
from bench import checkpoint, config, metrics, objectives, vocabulary
from bench.config import RunConfig
from bench.data import Dataset
from bench.errors import ConfigError, NonFiniteLoss
from bench.schedules import LR_SCHEDULES, PER_STEP, kl_weight
from bench.step import base_lrs, make_optimizer, make_step, set_lr
from variants import priors
from variants.base import Decoder

LogFn = Callable[[dict[str, float], int | None], None]
# checkpoint(epoch, state): called after every epoch is logged; ``state()`` builds the checkpoint
# (bench.checkpoint.capture), so a hook that skips an epoch pays nothing for it
CheckpointFn = Callable[[int, Callable[[], dict]], None]
# on_epoch(epoch, row): after each epoch's log, with the epoch's logged values (the progress display
# formats them, bench.run.progress); on_epoch(FINAL, final) after the final evaluation
EpochFn = Callable[[int, dict[str, float]], None]
FINAL = -1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(cfg: RunConfig, data: Dataset) -> nn.Module:
    try:
        model = variants.build(
            cfg.variant,
            x_shape=data.x_shape,
            latent_dim=cfg.latent_dim,
            hidden=tuple(cfg.hidden),
            likelihood=data.likelihood,
            activation=cfg.activation,
            **cfg.variant_options,
        )
        priors.attach(model, cfg.prior, cfg.prior_components, cfg.variant_options)  # "standard": unchanged
    except (variants.VariantConfigError, ValueError) as e:
        raise ConfigError(f"run {cfg.run_name}: {e}") from None
    if cfg.init_decoder_bias:  # Burda et al.'s code: the output bias starts at the training mean
        decoders = [m for m in model.modules() if isinstance(m, Decoder)]
        if not decoders:
            raise ConfigError(f"run {cfg.run_name}: init_decoder_bias: variant {cfg.variant!r} has no Decoder")
        try:
            for d in decoders:
                d.init_output_bias(data.train[: cfg.train_size or None].mean(0))
        except variants.VariantConfigError as e:
            raise ConfigError(f"run {cfg.run_name}: {e}") from None
    return model


@torch.no_grad()
def evaluate_elbo(model: nn.Module, x: Tensor, k: int, chunk: int = 0) -> dict[str, float]:
    """ELBO = recon - KL on ``x`` with ``k`` samples of q per example (the closed-form KL where
    the variant gives one, else ``mean_j [log q(z_j | x) - log p(z_j)]``, e.g. under a learned
    prior), in passes of about ``chunk`` log-weights (``0``: sized for the device,
    ``bench.metrics.log_weight_chunk``). Returns means over examples."""
    recon = kl = 0.0
    with priors.fixed(model):  # a VampPrior's components computed once (variants.priors)
        batch = max(1, metrics.log_weight_chunk(model, x, chunk=chunk) // k)
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
    # every value this call logged: metric -> [(step, value), ...] in logging order (a resumed run:
    # the epochs after its checkpoint only)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


class UnregisteredMetric(UserWarning):
    """A logged metric name that ``bench.vocabulary`` does not know: register it there."""


def recording(log: LogFn, history: dict[str, list[tuple[int, float]]]) -> LogFn:
    """``log`` that also appends every value to ``history`` and checks each name against the
    vocabulary (a warning names the unknown ones)."""

    def record(values: dict[str, float], step: int | None) -> None:
        unknown = vocabulary.unregistered(values)
        if unknown:
            warnings.warn(f"metric(s) {', '.join(unknown)} not in the vocabulary: register them in bench/vocabulary.py",
                          UnregisteredMetric, stacklevel=2)
        for k, v in values.items():
            history.setdefault(k, []).append((step or 0, v))
        log(values, step)

    return record


def _fit_batches(data: Dataset, cfg: RunConfig, device: torch.device, n: int = 8) -> list[Tensor]:
    """``n`` fixed training batches of ``grad_batch`` examples (binarized as the data's protocol
    says) on which :func:`measure` fits a trainable objective's own parameters."""
    g = torch.Generator(device=device).manual_seed(1)
    x = data.train[torch.randperm(len(data.train), generator=g, device=device)[: n * cfg.grad_batch]]
    if data.binarization == "dynamic":
        x = torch.bernoulli(x, generator=g)
    return list(x.split(cfg.grad_batch))


def measure(
    model, cfg: RunConfig, data: Dataset, grad_x: Tensor, epoch: int, final: bool, objective=None,
    ais_px: Tensor | None = None,
) -> dict[str, float]:
    """The scheduled measurements: the gap decomposition on a fixed test subset, and gradient
    variance/SNR of the run's objective (``objective``, the run's instance, trained parameters
    included; and of ``grad_objectives`` x ``grad_ks``) on a fixed training batch, all at the
    current parameters. A trainable objective of ``grad_objectives`` is built fresh and its own
    parameters fitted first, the model frozen (``grad_fit_steps`` steps on training batches:
    ``bench.objectives.fit``). With ``gap_log_px = "max-iwae-ais"`` the gaps' log p(x) is the
    larger of IWAE and AIS per example (``ais_px``: AIS on the gap subset, if the caller has it).
    Skipped measurements (``bench.config.skipped_measurements``) are not made."""
    out: dict[str, float] = {}
    skip = config.skipped_measurements(cfg, type(model))
    if "gaps" not in skip and (final or epoch in cfg.gap_epochs):
        gap_x = data.test[: cfg.gap_size]
        if ais_px is None and cfg.gap_log_px == "max-iwae-ais" and "ais" not in skip:
            ais_px = metrics.ais_log_likelihood(model, gap_x, n_chains=cfg.ais_chains, n_steps=cfg.ais_steps,
                                                chunk=cfg.eval_chunk)
        g = metrics.gaps(
            model, gap_x, k_eval=cfg.gap_k or cfg.eval_k, local_steps=cfg.gap_steps, log_px_lower=ais_px,
            chunk=cfg.eval_chunk,
        )
        out.update({f"gap/{key}": v.mean().item() for key, v in g.items()})
    if "grad" not in skip and (final or epoch in cfg.grad_epochs):
        if objective is None:
            objective = objectives.build(cfg.objective, **cfg.objective_options.get(cfg.objective, {}))
        own = metrics.gradient_stats(model, grad_x, objective, n=cfg.grad_draws, k=cfg.k)
        out.update({f"grad/{key}": v for key, v in own.items()})
        vcls = type(model)
        for name in cfg.grad_objectives:
            if not objectives.applies_to(name, vcls):
                continue
            for k in cfg.grad_ks or [cfg.k]:
                other = objectives.build(name, **cfg.objective_options.get(name, {}))
                if isinstance(other, nn.Module):  # trainable: brought to its working point first
                    other.to(grad_x.device)
                    objectives.fit(other, model, _fit_batches(data, cfg, grad_x.device), k, cfg.grad_fit_steps)
                s = metrics.gradient_stats(model, grad_x, other, n=cfg.grad_draws, k=k)
                out.update({f"grad/{name}/k{k}/{key}": v for key, v in s.items()})
    return out


def evaluate_ais(
    model, cfg: RunConfig, data: Dataset, test: Tensor, skip: dict[str, str]
) -> tuple[dict[str, float], Tensor | None]:
    """The final AIS and BDMC numbers the config asks for: ``(metrics, AIS on the gap subset or
    None)``. ``test/log_px_ais`` is the mean AIS estimate over the first ``ais_size`` test
    examples, ``test/bdmc_gap`` the mean of upper - lower over ``bdmc_size`` simulated points.
    Where AIS does not apply (``"ais"`` in ``skip``: discrete latents) nothing is computed."""
    out: dict[str, float] = {}
    if "ais" in skip:
        return out, None
    settings = {"n_chains": cfg.ais_chains, "n_steps": cfg.ais_steps, "chunk": cfg.eval_chunk}
    n_test = min(cfg.ais_size, len(test))
    n_gap = cfg.gap_size if cfg.gap_log_px == "max-iwae-ais" and "gaps" not in skip else 0
    gap_px = None
    if n_test or n_gap:  # one AIS pass over the union of the two prefixes of the test split
        a = metrics.ais_log_likelihood(model, data.test[: max(n_test, n_gap)], **settings)
        if n_test:
            out["test/log_px_ais"] = a[:n_test].mean().item()
        gap_px = a[:n_gap] if n_gap else None
    if cfg.bdmc_size:
        lower, upper = metrics.bdmc(model, cfg.bdmc_size, **settings)
        out["test/bdmc_gap"] = (upper - lower).mean().item()
    return out, gap_px


def evaluate_test(model, cfg: RunConfig, data: Dataset, test: Tensor, grad_x: Tensor, objective,
                  skip: dict[str, str], device: torch.device) -> dict[str, float]:
    """The final measurements on the ``test`` split (the model in eval mode): the ELBO and its
    terms, ``log p(x)`` (timed: ``perf/eval_examples_per_s``), the oracle's exact value, the
    codebook perplexity, active units, AIS and BDMC, and the final gaps and gradient statistics."""
    final: dict[str, float] = {}
    t = evaluate_elbo(model, test, cfg.val_k, cfg.eval_chunk)
    final.update({"test/elbo": t["elbo"], "test/recon": t["recon"], "test/kl": t["kl"]})
    sync(device)
    t0 = time.perf_counter()
    eval_k = 1 if "log_px" in skip else cfg.eval_k  # the throughput is still measured (one sample)
    log_px = metrics.log_likelihood(model, test, k=eval_k, chunk=cfg.eval_chunk)
    sync(device)
    eval_s = time.perf_counter() - t0
    if "log_px" not in skip:
        final["test/log_px"] = log_px.mean().item()
    if hasattr(model, "exact_log_marginal"):  # the oracle: the estimate's error is visible
        with torch.no_grad():
            final["test/exact_log_px"] = model.exact_log_marginal(test).mean().item()
    if hasattr(model, "codebook_perplexity"):  # VQ-VAE: the effective number of codes used
        final["test/codebook_perplexity"] = model.codebook_perplexity(test)
    if "active_units" not in skip:
        if metrics.layers_unsupported(model) is None:  # several stochastic layers: each one's count too
            per_layer = metrics.active_units(model, test, per_layer=True)
            final.update({f"test/active_units_l{i}": float(c) for i, c in enumerate(per_layer, 1)})
            final["test/active_units"] = float(sum(per_layer))
        else:
            final["test/active_units"] = float(metrics.active_units(model, test))
    ais_final, gap_ais = evaluate_ais(model, cfg, data, test, skip)
    final.update(ais_final)
    final.update(measure(model, cfg, data, grad_x, cfg.epochs, final=True, objective=objective, ais_px=gap_ais))
    final["perf/eval_examples_per_s"] = len(test) / eval_s
    return final


def run(cfg: RunConfig, data: Dataset, log: LogFn, on_epoch: EpochFn | None = None,
        checkpoint_fn: CheckpointFn | None = None, resume: dict | None = None) -> RunResult:
    """Train and evaluate one run. ``resume``: a checkpoint of this run (``bench.checkpoint``);
    training continues after its epoch with every generator where it was, so the numbers are
    those of the uninterrupted run."""
    history: dict[str, list[tuple[int, float]]] = {}
    log = recording(log, history)
    device = config.resolve_device(cfg.device)
    if device.type == "cpu":
        # Subnormal floats (|x| < 1.2e-38 in float32) cost x86 CPUs many times a normal operation, and
        # Adam's first moments of weights that get (almost) no gradient (inputs that are always 0, dead
        # ReLUs) decay into them: a jang2017 run fell from 10.6k to 6.0k examples/s by its third epoch,
        # with 2e5 subnormal moments in its first layer. Flushed to zero (process-wide), it stays at 10.4k.
        torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = build_model(cfg, data).to(device)
    objective = objectives.build(cfg.objective, **cfg.objective_options.get(cfg.objective, {}))
    own_optimizer = None
    if isinstance(objective, nn.Module):  # a trainable objective: its parameters, its optimizer
        objective.to(device)
        own_optimizer = objective.optimizer(cfg.lr)
    optimizer = make_optimizer(model, cfg, device)  # a learned prior's own optimizer too (prior_optimizer)
    step_fn = make_step(cfg, model, objective, optimizer, own_optimizer, device)
    schedule, bases = LR_SCHEDULES[cfg.lr_schedule], base_lrs(optimizer)

    def lrs(epoch: int, step: int) -> list[float]:  # each parameter group's rate at this step
        return [schedule(base, epoch, step, cfg) for base in bases]
    skip = config.skipped_measurements(cfg, type(model))

    train = data.train[: cfg.train_size] if cfg.train_size else data.train
    test = data.test[: cfg.test_size] if cfg.test_size else data.test
    n, bs = len(train), cfg.batch_size
    grad_x = data.train_epoch(torch.Generator(device=device).manual_seed(0))[: cfg.grad_batch]
    metrics.reset_peak_memory(device)

    done, step, (timed_s, timed_n, train_s) = 0, 0, (0.0, 0, 0.0)
    if resume is not None:  # after the built model's initialization: the checkpoint overwrites it
        done, step, (timed_s, timed_n, train_s) = checkpoint.restore(resume, model, optimizer, gen, objective,
                                                                     own_optimizer)
    for epoch in range(done + 1, cfg.epochs + 1):
        model.train()
        lr_now = lrs(epoch, step)
        set_lr(optimizer, lr_now)
        x_epoch = data.train_epoch(gen)[: cfg.train_size or None]
        # shuffle = false: minibatches in the training split's order (Burda et al.'s code)
        perm = torch.randperm(n, device=device, generator=gen) if cfg.shuffle else None
        total = torch.zeros((), device=device)
        sync(device)
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            model.on_train_step(step)
            if cfg.lr_schedule in PER_STEP and (lr := lrs(epoch, step)) != lr_now:  # host floats: no sync
                set_lr(optimizer, lr)
                lr_now = lr
            beta = kl_weight(step, cfg.kl_warmup_epochs, math.ceil(n / bs))
            total += step_fn(x_epoch[perm[i : i + bs]] if perm is not None else x_epoch[i : i + bs], beta)
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
        val = evaluate_elbo(model, data.val, cfg.val_k, cfg.eval_chunk)
        row = {"train/loss": -train_bound, "val/elbo": val["elbo"], "train/examples_per_s": n / dt}
        if cfg.kl_warmup_epochs:
            row["train/kl_weight"] = kl_weight(step - 1, cfg.kl_warmup_epochs, math.ceil(n / bs)) or 1.0
        if epoch < cfg.epochs and cfg.evaluate == "test":
            row.update(measure(model, cfg, data, grad_x, epoch, final=False, objective=objective))
        log(row, epoch)
        if on_epoch is not None:
            on_epoch(epoch, row)
        if checkpoint_fn is not None:  # after the log: killed in between, the resumed run redoes
            # this epoch and its logger drops the steps the run already has (bench.run.worker)
            state = functools.partial(checkpoint.capture, epoch, step, model, optimizer, gen, (timed_s, timed_n, train_s),
                                      objective, own_optimizer)  # called (or not) by checkpoint_fn, now
            checkpoint_fn(epoch, state)

    # -- final evaluation (not part of the training time; a search trial's has no test split) ------
    model.eval()
    final = {} if cfg.evaluate == "validation" else evaluate_test(model, cfg, data, test, grad_x, objective, skip, device)
    final.update({"perf/train_examples_per_s": timed_n / timed_s, "perf/train_seconds": train_s,
                  "perf/peak_mem_mb": metrics.peak_memory_mb(device)})
    bad = sorted(k for k, v in final.items() if not math.isfinite(v) and not k.startswith("grad/"))
    log(final, cfg.epochs)
    if bad:
        raise NonFiniteLoss(f"run {cfg.run_name}: non-finite final metric(s) {', '.join(bad)}")
    if on_epoch is not None:
        on_epoch(FINAL, final)
    return RunResult(model=model, final=final, history=history)
