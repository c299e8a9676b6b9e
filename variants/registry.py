"""The variant registry: a dict filled by the ``@register`` decorator.

``available()`` lists the names, ``build(name, **config)`` constructs one. Variants register
themselves when their module is imported; ``variants/__init__.py`` imports every module of the
package, so adding a variant is adding a file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type)


class UnknownVariantError(KeyError, ValueError):
    """An unknown variant name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class VariantConfigError(TypeError, ValueError):
    """A configuration key the variant does not accept, or a value it cannot use."""


def register(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("vanilla")`` makes the class buildable by that name."""

    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"variant {name!r} registered twice ({_REGISTRY[name]} and {cls})")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def available() -> list[str]:
    """Registered variant names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[nn.Module]:
    """The class registered under ``name``; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownVariantError(
            f"unknown variant {name!r}; valid variants: {', '.join(available())}"
        ) from None


def accepted_options(name: str) -> dict[str, object]:
    """Keyword options of a variant's constructor with their defaults."""
    sig = inspect.signature(get(name).__init__)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[1:]
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def build(name: str, **config) -> nn.Module:
    """Construct the variant ``name``; unknown keyword options are an error naming the valid ones."""
    cls = get(name)
    valid = accepted_options(name)
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise VariantConfigError(
            f"variant {name!r} does not accept option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(sorted(valid))}"
        )
    return cls(**config)
