"""The objective (gradient estimator) registry.

An objective is a callable ``objective(model, x, k, params=None) -> Estimate``:

* ``Estimate.value``: ``[B]``, detached, the per-example value of the *bound* the objective
  estimates (ELBO, IWAE bound, ...). This is what the harness logs.
* ``Estimate.surrogate``: a scalar to *minimize*; its gradient is the estimator. It is never logged:
  for score-function and doubly-reparameterized estimators its value means nothing.

Objectives declared ``warmup=True`` also accept ``kl_weight`` (``beta`` in ``[0, 1]``, default 1):
the surrogate is then that of ``E_q[log p(x | z)] - beta KL`` written as the objective writes the
ELBO (``log p(x | z) + beta (log p(z) - log q(z | x))`` in the learning signal, ``beta`` times the
closed-form KL), while ``value`` stays the true bound (KL warm-up, Sønderby et al. 2016; the
training loop's ``kl_warmup_epochs``). IWAE-type bounds (``iwae``, ``dreg``, ``vimco``) have no
separate KL term and do not declare it.

Most objectives own no parameters (Pyro's ELBO classes are the model). A *trainable* objective
(NVIL's baseline network, REBAR's temperature and scale, RELAX's control-variate network) is an
:class:`TrainableObjective`, an ``nn.Module`` whose ``state_dict`` holds its parameters and
statistics; ``build(name)`` makes a fresh instance per run. The contract for training its
parameters, which :func:`gradients` implements and the training loop and
``bench.metrics.gradient_stats`` both use:

* the model's parameters get the gradient of ``surrogate`` and nothing else (the estimator);
* the objective's own parameters get the gradient of a loss of their own, never of the
  surrogate: ``Estimate.own_loss`` where it does not depend on the model's gradient (NVIL's
  regression of the learning signal), or, for ``minimizes_variance`` objectives (REBAR, RELAX),
  the squared norm of the encoder's estimated gradient, ``sum_c g_c^2``, whose gradient is that
  of the estimator's variance because the estimator's mean does not depend on them
  (Tucker et al. 2017, Grathwohl et al. 2018);
* ``objective.optimizer(lr)`` is the optimizer the training loop steps for them.

Which objectives apply to which variants is declared: an objective names the sampling modes it
needs (``variants.base.MODES``), the latent kinds it is meant for, and what else it needs of the
variant (``needs``: attributes or methods the variant class must have, e.g. ``binary_terms``, the
log-weight terms at given binary codes); it applies to a variant whose ``modes`` contain its modes,
whose ``latent`` is among its kinds and that has everything it ``needs``.

Objectives from outside the repository: a module that registers with :func:`register` (imported
by ``--plugin`` or a suite's ``plugins``), or an entry point in the group ``vaebench.objectives``
whose module does (``name = "pkg.module:function"``); :data:`PROVENANCE` (``variants.plugins``)
records each name's source and refuses clashes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from variants.plugins import Provenance


@dataclass
class Estimate:
    value: Tensor  # [B] the bound per example, detached: what gets logged
    surrogate: Tensor  # scalar to minimize: what gets differentiated
    own_loss: Tensor | None = None  # scalar for a trainable objective's own parameters (see module doc)


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    factory: Callable  # a function (stateless objective) or a class (instantiated per run)
    modes: frozenset[str]
    latents: frozenset[str]
    summary: str
    needs: tuple[str, ...] = ()  # class attributes / methods the variant must have (truthy)
    warmup: bool = False  # accepts kl_weight (KL warm-up of an ELBO-type objective)

    @property
    def trainable(self) -> bool:
        """Whether the objective trains parameters of its own (a :class:`TrainableObjective`,
        instantiated per run, with an optimizer of its own); a class without parameters (``rws``,
        a function with options) is not."""
        return isinstance(self.factory, type) and issubclass(self.factory, nn.Module)


_REGISTRY: dict[str, ObjectiveSpec] = {}


class UnknownObjectiveError(KeyError, ValueError):
    def __str__(self) -> str:
        return str(self.args[0])


class NotApplicableError(ValueError):
    """The objective cannot estimate gradients for this variant (declared, not guessed)."""


class TrainableObjective(nn.Module):
    """Base class of objectives with parameters or statistics of their own (see the module doc).

    Subclasses implement ``forward(model, x, k=..., params=None, kl_weight=1.0) -> Estimate``;
    those whose parameters minimize the estimator's variance set ``minimizes_variance = True``,
    the others return ``Estimate.own_loss``. Running statistics (buffers) are updated only in
    training mode (``objective.train()``, the default); ``bench.metrics.gradient_stats`` restores
    them after its draws.
    """

    minimizes_variance: ClassVar[bool] = False
    betas: ClassVar[tuple[float, float]] = (0.9, 0.999)

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Adam over the objective's parameters (at the model's learning rate by default)."""
        return torch.optim.Adam(self.parameters(), lr=lr, betas=self.betas)


def register(
    name: str,
    *,
    modes: tuple[str, ...],
    latents: tuple[str, ...] = ("continuous",),
    needs: tuple[str, ...] = (),
    warmup: bool = False,
):
    """Decorator for an objective function or class.

    ``modes``: the ``terms`` sampling modes the objective calls; ``latents``: the latent kinds it is
    meant for (``"continuous"``, ``"discrete"``, ``"quantized"``); ``needs``: class attributes or
    methods of the variant that must exist and be truthy (``variants.base.VAE`` documents them);
    ``warmup``: the objective accepts ``kl_weight``. The first docstring line is its summary.
    """

    def deco(fn):
        if not PROVENANCE.claim(name, fn):
            return fn
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = ObjectiveSpec(
            name, fn, frozenset(modes), frozenset(latents), summary, tuple(needs), warmup
        )
        return fn

    return deco


PROVENANCE = Provenance("objective", "vaebench.objectives", "bench.objectives.", _REGISTRY, None, lambda s: s.factory)


def available() -> list[str]:
    """Objective names, sorted: the registered ones and those of ``vaebench.objectives`` entry points."""
    return sorted(PROVENANCE.names())


def source(name: str) -> str:
    """Where ``name`` comes from: ``built-in``, ``entry point DIST:MODULE`` or ``plugin module MODULE``."""
    spec(name)
    return PROVENANCE.sources[name]


def spec(name: str) -> ObjectiveSpec:
    PROVENANCE.load(name)  # an entry point's module is imported the first time its name is resolved
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownObjectiveError(
            f"unknown objective {name!r}; valid objectives: {', '.join(available())}"
        ) from None


def applies_to(name: str, variant_cls) -> bool:
    s = spec(name)
    return (
        variant_cls.latent in s.latents
        and s.modes <= set(variant_cls.modes)
        and all(getattr(variant_cls, attr, False) for attr in s.needs)
    )


def applicable(variant_cls) -> list[str]:
    """Objectives that apply to a variant class."""
    return [n for n in available() if applies_to(n, variant_cls)]


def check_applies(name: str, variant_cls) -> None:
    if not applies_to(name, variant_cls):
        s = spec(name)
        raise NotApplicableError(
            f"objective {name!r} needs {'/'.join(sorted(s.latents))} latents with sampling "
            f"mode(s) {', '.join(sorted(s.modes))}{''.join(f' and {a}' for a in s.needs)}; variant {variant_cls.name!r} "
            f"({variant_cls.latent} latents) supports: {', '.join(applicable(variant_cls)) or 'none'}"
        )


def build(name: str, **options) -> Callable[..., Estimate]:
    """A fresh objective callable (a new instance for stateful objectives, built with
    ``options``; a function takes none). Bad options raise ``ValueError`` naming the valid ones."""
    f = spec(name).factory
    if not isinstance(f, type):
        if options:
            raise ValueError(f"objective {name!r} takes no options, got {', '.join(sorted(options))}")
        return f
    valid = sorted(options_of(name))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"objective {name!r} does not accept option(s) {', '.join(unknown)}; "
                         f"valid options: {', '.join(valid) or 'none'}")
    return f(**options)


def options_of(name: str) -> dict[str, object]:
    """The keyword options of a class objective's constructor with their defaults (``{}`` for a
    function), its base classes' included."""
    import inspect

    f = spec(name).factory
    if not isinstance(f, type):
        return {}
    out: dict[str, object] = {}
    for cls in reversed(f.__mro__):
        init = cls.__dict__.get("__init__")
        if init is None or cls in (object, nn.Module):
            continue
        for p in list(inspect.signature(init).parameters.values())[1:]:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                out[p.name] = p.default
    return out


def own_parameters(objective) -> list[nn.Parameter]:
    """The trainable parameters of an objective (``[]`` for a stateless function)."""
    return [p for p in objective.parameters() if p.requires_grad] if isinstance(objective, nn.Module) else []


def gradients(
    objective, est: Estimate, params: Sequence[Tensor], encoder: Sequence[Tensor] = ()
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """``(gradient of est.surrogate w.r.t. params, gradient of the objective's own loss w.r.t. its
    parameters)``, by the contract of the module docstring; ``encoder`` is the subset of
    ``params`` whose squared gradient a ``minimizes_variance`` objective minimizes. Entries are
    ``None`` where no gradient reaches a tensor. Uses ``torch.autograd.grad``: no ``.grad`` changes.
    """
    own = own_parameters(objective)
    params = list(params)
    if not own:
        return list(torch.autograd.grad(est.surrogate, params, allow_unused=True)), []
    if getattr(objective, "minimizes_variance", False):
        g = torch.autograd.grad(est.surrogate, params, create_graph=True, allow_unused=True)
        enc = {id(p) for p in encoder}
        sq = [(gi**2).sum() for p, gi in zip(params, g) if gi is not None and id(p) in enc]
        if not sq:
            raise ValueError("a variance-minimizing objective needs the encoder's parameters")
        own_g = torch.autograd.grad(torch.stack(sq).sum(), own, allow_unused=True)
        return [None if gi is None else gi.detach() for gi in g], list(own_g)
    g = torch.autograd.grad(est.surrogate, params, retain_graph=est.own_loss is not None, allow_unused=True)
    if est.own_loss is None:
        raise ValueError(f"{type(objective).__name__} has parameters but returned no own_loss")
    return list(g), list(torch.autograd.grad(est.own_loss, own, allow_unused=True))


def backward(objective, est: Estimate, model: nn.Module) -> None:
    """Set ``.grad`` of the model's parameters to the estimator and, for a trainable objective,
    of its own parameters to their training gradient (:func:`gradients`). A stateless objective
    is plain ``est.surrogate.backward()`` (gradients accumulate into ``.grad`` as usual)."""
    own = own_parameters(objective)
    if not own:
        est.surrogate.backward()
        return
    params = [p for p in model.parameters() if p.requires_grad]
    g, own_g = gradients(objective, est, params, model.parameter_groups()["encoder"])
    for p, gi in zip([*params, *own], [*g, *own_g]):
        p.grad = None if gi is None else gi.detach()


def fit(objective, model: nn.Module, batches, k: int, steps: int, lr: float = 1e-2) -> None:
    """Train a trainable objective's own parameters with the model frozen (its ``.grad`` and
    weights untouched): ``steps`` Adam steps (``lr``, default betas), cycling over ``batches`` (a
    list of ``[B, D]`` tensors). How an estimator beside the run's own is brought to its working
    point before its gradient statistics are measured at a checkpoint. No-op for a stateless
    objective."""
    objective(model, batches[0], k)  # materializes lazily sized networks before the optimizer sees them
    own = own_parameters(objective)
    if not own or steps < 1:
        return
    opt = torch.optim.Adam(own, lr=lr)
    params = [p for p in model.parameters() if p.requires_grad]
    encoder = model.parameter_groups()["encoder"]
    for i in range(steps):
        est = objective(model, batches[i % len(batches)], k)
        _, own_g = gradients(objective, est, params, encoder)
        for p, gi in zip(own, own_g):
            p.grad = None if gi is None else gi.detach()
        opt.step()
