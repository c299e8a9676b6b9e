"""The objective (gradient estimator) registry.

An objective is a callable ``objective(model, x, k, params=None) -> Estimate``:

* ``Estimate.value``: ``[B]``, detached, the per-example value of the *bound* the objective
  estimates (ELBO, IWAE bound, ...). This is what the harness logs.
* ``Estimate.surrogate``: a scalar to *minimize*; its gradient is the estimator. It is never logged:
  for score-function and doubly-reparameterized estimators its value means nothing.

Objectives own no trainable parameters (Pyro's ELBO classes are the model); a stateful one (a
moving-average baseline) is a class, and ``build(name)`` makes a fresh instance per run.

Which objectives apply to which variants is declared: an objective names the sampling modes it
needs (``variants.base.MODES``) and the latent kinds it is meant for; it applies to a variant
whose ``modes`` contain them and whose ``latent`` is among its kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor


@dataclass
class Estimate:
    value: Tensor  # [B] the bound per example, detached: what gets logged
    surrogate: Tensor  # scalar to minimize: what gets differentiated


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    factory: Callable  # a function (stateless objective) or a class (instantiated per run)
    modes: frozenset[str]
    latents: frozenset[str]
    summary: str
    needs: tuple[str, ...] = ()  # boolean class attributes the variant must set (e.g. q_determined_by_params)


_REGISTRY: dict[str, ObjectiveSpec] = {}


class UnknownObjectiveError(KeyError, ValueError):
    def __str__(self) -> str:
        return str(self.args[0])


class NotApplicableError(ValueError):
    """The objective cannot estimate gradients for this variant (declared, not guessed)."""


def register(
    name: str, *, modes: tuple[str, ...], latents: tuple[str, ...] = ("continuous",), needs: tuple[str, ...] = ()
):
    """Decorator for an objective function or class.

    ``modes``: the ``terms`` sampling modes the objective calls; ``latents``: the latent kinds it is
    meant for (``"continuous"``, ``"discrete"``); ``needs``: boolean class attributes of the variant
    that must hold (``variants.base.VAE`` documents them). The first docstring line is its summary.
    """

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = ObjectiveSpec(name, fn, frozenset(modes), frozenset(latents), summary, tuple(needs))
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def spec(name: str) -> ObjectiveSpec:
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


def build(name: str) -> Callable[..., Estimate]:
    """A fresh objective callable (a new instance for stateful objectives)."""
    f = spec(name).factory
    return f() if isinstance(f, type) else f
