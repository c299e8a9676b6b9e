"""The variant registry: a dict filled by the ``@register`` decorator.

``available()`` lists the names, ``build(name, **config)`` constructs one. Variants register
themselves when their module is imported; ``variants/__init__.py`` imports every module of the
package, so adding a variant is adding a file. Variants from outside the repository come in
through the entry-point group ``vaebench.variants`` (loaded when their name is first resolved) or
a plugin module that uses the decorator; :data:`PROVENANCE` (``variants.plugins``) records where
each name comes from and refuses clashes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from variants.plugins import Provenance

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
        if PROVENANCE.claim(name, cls):
            _REGISTRY[name] = cls
            cls.name = name
        return cls

    return deco


PROVENANCE = Provenance("variant", "vaebench.variants", "variants.", _REGISTRY, lambda name, cls: register(name)(cls))


def available() -> list[str]:
    """Variant names, sorted: the registered ones and those of ``vaebench.variants`` entry points."""
    return sorted(PROVENANCE.names())


def source(name: str) -> str:
    """Where ``name`` comes from: ``built-in``, ``entry point DIST:MODULE`` or ``plugin module MODULE``."""
    get(name)
    return PROVENANCE.sources[name]


def get(name: str) -> type[nn.Module]:
    """The class registered under ``name`` (an entry point's is imported here, the first time);
    an unknown name lists the valid ones."""
    PROVENANCE.load(name)
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
