"""One optimizer step on a batch: the optimizer (Adam, SGD, Adagrad or RMSprop, and a learned prior's
own), and the step of each ``step_mode`` (eager, compiled, captured).

:func:`make_step` returns the run's step function, ``step(x, kl_weight) -> the bound summed over
the batch`` (0-dim, on the device: no host sync): :func:`train_step` (``"eager"``),
:class:`CompiledStep` (``"compile"``) or :class:`CapturedStep` (``"cuda-graph"``). What a step
mode cannot run is the config's policy (``bench.config.step_mode_unsupported``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench import objectives
from bench.config import OPTIMIZERS, RunConfig, step_mode_unsupported
from bench.errors import ConfigError


def make_optimizer(params, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optimizer`` at ``cfg.lr`` (``bench.config.RunConfig``: the update
    rules and ``weight_decay``). ``params``: the parameters, or the model itself; then, with
    ``cfg.prior_optimizer`` set, the prior's parameters (``model.prior_parameters()``) get an
    optimizer of their own at ``cfg.prior_lr`` and the result is a :class:`PriorSplit`.

    Adam is built in the implementation that is fastest where the run executes. CPU: the fused
    kernel (``fused=True``; measured for the 784-512-512-64 model's 1.4M parameters on this
    project's CPU, one thread: 1.4 ms a step against 4.4 ms for torch's default for-loop and 5.8 ms
    for foreach). CUDA: torch's default there (foreach), which torch's documentation recommends;
    ``capturable`` for ``step_mode = "cuda-graph"`` (the step counters on the device, so that a
    replayed step reads and advances them). The update rule is the same. SGD, Adagrad and RMSprop
    are torch's, in its default implementation (foreach on CUDA, the for-loop on CPU)."""
    if isinstance(params, nn.Module) and cfg.prior_optimizer:
        prior = params.prior_parameters()
        ids = {id(p) for p in prior}
        rest = [p for p in params.parameters() if id(p) not in ids]
        return PriorSplit(_optimizer(cfg.optimizer, rest, cfg, device),
                          _optimizer(cfg.prior_optimizer, prior, cfg, device, lr=cfg.prior_lr or cfg.lr, plain=True))
    if cfg.prior_optimizer:
        raise ValueError("make_optimizer: prior_optimizer is set: pass the model, whose prior_parameters() it trains")
    params = params.parameters() if isinstance(params, nn.Module) else params
    return _optimizer(cfg.optimizer, list(params), cfg, device)


def _optimizer(name: str, params: list, cfg: RunConfig, device: torch.device, lr: float | None = None,
               plain: bool = False) -> torch.optim.Optimizer:
    """Optimizer ``name`` over ``params`` at ``lr`` (``cfg.lr``) with the config's momentum and
    weight decay, or torch's defaults for them where ``plain`` (a prior's own optimizer)."""
    lr = cfg.lr if lr is None else lr
    wd, momentum = (0.0, 0.0) if plain else (cfg.weight_decay, cfg.momentum)
    if name == "adam":
        if device.type == "cuda":
            return torch.optim.Adam(params, lr=lr, eps=cfg.adam_eps, weight_decay=wd,
                                    capturable=cfg.step_mode == "cuda-graph")
        return torch.optim.Adam(params, lr=lr, eps=cfg.adam_eps, weight_decay=wd, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=wd)
    raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


class PriorSplit:
    """Two optimizers behind the one interface the loop, the step modes and the checkpoints use
    (``step``, ``zero_grad``, ``param_groups``, ``state_dict``, ``load_state_dict``): ``model``
    over every parameter but the prior's, ``prior`` over the prior's (``prior_optimizer``).
    ``param_groups`` lists the model's groups first, then the prior's."""

    def __init__(self, model: torch.optim.Optimizer, prior: torch.optim.Optimizer):
        self.model, self.prior = model, prior

    @property
    def param_groups(self) -> list[dict]:
        return self.model.param_groups + self.prior.param_groups

    def step(self) -> None:
        self.model.step()
        self.prior.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)
        self.prior.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "prior": self.prior.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.prior.load_state_dict(state["prior"])


def base_lrs(optimizer) -> list[float]:
    """Each parameter group's learning rate as built (before any schedule): what a schedule scales."""
    return [float(group["lr"]) for group in optimizer.param_groups]


def set_lr(optimizer, lr: float | list[float]) -> None:
    """Every parameter group's learning rate := ``lr`` (a list: one per group, in the order of
    ``optimizer.param_groups``); in place where it is a tensor (a captured step reads that tensor,
    :class:`CapturedStep`)."""
    lrs = lr if isinstance(lr, list) else [lr] * len(optimizer.param_groups)
    for group, value in zip(optimizer.param_groups, lrs, strict=True):
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def train_step(
    model: nn.Module, objective, optimizer: torch.optim.Optimizer, x: Tensor, k: int,
    own_optimizer: torch.optim.Optimizer | None = None, kl_weight: float | None = None,
) -> Tensor:
    """One optimizer step on a batch ``x: [B, D]``; returns the bound summed over the batch
    (detached, on the device: no host sync). ``own_optimizer`` steps a trainable objective's
    parameters; ``kl_weight`` (warm-up) weights the KL in the surrogate only."""
    est = objective(model, x, k) if kl_weight is None else objective(model, x, k, kl_weight=kl_weight)
    optimizer.zero_grad(set_to_none=True)
    objectives.backward(objective, est, model)
    optimizer.step()
    if own_optimizer is not None:
        own_optimizer.step()
    return est.value.sum()


# step(x, kl_weight) -> the bound summed over the batch (0-dim, on the device)
StepFn = Callable[[Tensor, "float | None"], Tensor]


def make_step(cfg: RunConfig, model: nn.Module, objective, optimizer: torch.optim.Optimizer,
              own_optimizer: torch.optim.Optimizer | None, device: torch.device) -> StepFn:
    """The training step of ``cfg.step_mode`` (``bench.config.RunConfig``): :func:`train_step`
    (``"eager"``), :class:`CompiledStep` (``"compile"``) or :class:`CapturedStep` (``"cuda-graph"``)."""
    why = step_mode_unsupported(cfg) or (
        "step_mode = 'cuda-graph' needs a CUDA device; this run is on cpu"
        if cfg.step_mode == "cuda-graph" and device.type != "cuda" else None)
    if why:
        raise ConfigError(f"run {cfg.run_name}: {why}")
    if cfg.step_mode == "compile":
        return CompiledStep(model, objective, optimizer, cfg.k, device)
    if cfg.step_mode == "cuda-graph":
        return CapturedStep(model, objective, optimizer, cfg.k, device)
    return functools.partial(_eager_step, model, objective, optimizer, cfg.k, own_optimizer)


def _eager_step(model, objective, optimizer, k, own_optimizer, x: Tensor, kl_weight: float | None) -> Tensor:
    return train_step(model, objective, optimizer, x, k, own_optimizer, kl_weight)


class CompiledStep:
    """``step_mode = "compile"``: the objective's forward compiled by ``torch.compile`` (inductor),
    and with it, through AOTAutograd, its backward; the optimizer eager (:func:`make_optimizer`,
    any of them).

    Inductor runs with ``fallback_random``: its random ops are eager's, drawing from the same
    generators in the same order, so a compiled run has the same noise as an eager one and its
    numbers differ only by float rounding (fused kernels reorder arithmetic). One graph per batch
    shape (the last, smaller batch of an epoch gets its own) and per warm-up state: the KL weight
    enters as a 0-dim tensor, so its changing value recompiles nothing."""

    def __init__(self, model: nn.Module, objective, optimizer: torch.optim.Optimizer, k: int, device: torch.device):
        self.model, self.objective, self.optimizer = model, objective, optimizer
        self.beta = torch.zeros((), device=device)
        self.compiled = False

        def forward(x: Tensor, beta: Tensor | None) -> tuple[Tensor, Tensor]:
            est = objective(model, x, k) if beta is None else objective(model, x, k, kl_weight=beta)
            return est.value, est.surrogate

        self.forward = torch.compile(forward, dynamic=False, options={"fallback_random": True})

    def __call__(self, x: Tensor, kl_weight: float | None = None) -> Tensor:
        beta = None if kl_weight is None else self.beta.fill_(kl_weight)
        if self.compiled:
            value, surrogate = self.forward(x, beta)
        else:  # the first call compiles: a missing toolchain is a message, not a stack trace
            try:
                value, surrogate = self.forward(x, beta)
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise ConfigError(
                    f"step_mode = 'compile': torch.compile failed ({type(e).__name__}: {first}); on CPU inductor "
                    "needs a C++ compiler (g++ or clang++, or $CXX): install one or use step_mode = 'eager'"
                ) from e
            self.compiled = True
        self.optimizer.zero_grad(set_to_none=True)
        objectives.backward(self.objective, objectives.Estimate(value, surrogate), self.model)
        self.optimizer.step()
        return value.sum()


class CapturedStep:
    """``step_mode = "cuda-graph"``: the whole step (forward, backward and Adam) captured in a CUDA
    graph and replayed, one launch instead of about a hundred (whole-network capture, as in
    torch's CUDA-graph notes: ``torch.cuda.graph``, Adam ``capturable``).

    Per batch shape and warm-up state (KL weight or none): the first ``warmup`` steps run eagerly
    on a side stream (they create Adam's state, cuBLAS's workspaces and the allocator's caches),
    the next is captured, and from then on each step copies its batch (and KL weight) into the
    graph's static inputs and replays it. The replay reads and writes in place what the eager step
    does: the parameters, Adam's moments and step counters, the learning rate (made a device
    tensor at capture, which :func:`set_lr` fills), the model's buffers (the Gumbel-softmax
    temperature, batch-norm statistics); its random ops draw from the CUDA generator, whose offset
    each replay advances by what one step consumes. Nothing in the step may synchronize with the
    host (a capture fails on it)."""

    def __init__(self, model: nn.Module, objective, optimizer: torch.optim.Optimizer, k: int, device: torch.device,
                 warmup: int = 3):
        self.model, self.objective, self.optimizer, self.k = model, objective, optimizer, k
        self.device, self.warmup = device, warmup
        self.stream = torch.cuda.Stream(device)
        self.graphs: dict[tuple, int | tuple] = {}  # key -> eager steps so far, or (graph, x, beta, bound)

    def __call__(self, x: Tensor, kl_weight: float | None = None) -> Tensor:
        key = (tuple(x.shape), kl_weight is None)
        entry = self.graphs.get(key, 0)
        if isinstance(entry, int) and entry < self.warmup:
            self.graphs[key] = entry + 1
            main = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(main)
            with torch.cuda.stream(self.stream):
                bound = train_step(self.model, self.objective, self.optimizer, x, self.k, None, kl_weight)
            main.wait_stream(self.stream)
            bound.record_stream(main)
            return bound
        if isinstance(entry, int):
            entry = self.graphs[key] = self._capture(x, kl_weight)
        graph, static_x, static_beta, static_bound = entry
        static_x.copy_(x)
        if static_beta is not None:
            static_beta.fill_(kl_weight)
        graph.replay()
        return static_bound

    def _capture(self, x: Tensor, kl_weight: float | None) -> tuple:
        static_x = x.clone()
        static_beta = None if kl_weight is None else torch.full((), kl_weight, device=self.device)
        for group in self.optimizer.param_groups:  # the value a replay reads: a tensor on the device
            if not isinstance(group["lr"], Tensor) or group["lr"].device != self.device:
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
        self.optimizer.zero_grad(set_to_none=True)  # the gradients live in the graph's memory pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                est = (self.objective(self.model, static_x, self.k) if static_beta is None
                       else self.objective(self.model, static_x, self.k, kl_weight=static_beta))
                objectives.backward(self.objective, est, self.model)
                self.optimizer.step()
                static_bound = est.value.sum()
        except RuntimeError as e:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"step_mode = 'cuda-graph': this step cannot be captured ({first}); "
                              "use step_mode = 'compile' or 'eager'") from e
        return graph, static_x, static_beta, static_bound
