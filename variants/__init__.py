"""The registry of VAE variants.

    >>> import variants
    >>> variants.available()            # registered names
    >>> model = variants.build("vanilla", x_shape=(1, 8, 8), latent_dim=8)
    >>> model.log_weights(x, k=5)       # Tensor[k, B] = log p(x, z_j) - log q(z_j | x)

Every module in this package except the shared ones (``base``, ``densities``, ``nets``, ``plugins``, ``priors``,
``registry``, ``testing``) is one variant that registers itself with ``@register(name)``; importing
the package imports them all. Variants from outside come in as plugins (``variants.plugins``), and
``variants.testing.check_variant`` checks one against the contract.
"""

from __future__ import annotations

import importlib
import pkgutil

from variants.base import VAE, LogWeightTerms
from variants.registry import (
    UnknownVariantError,
    VariantConfigError,
    accepted_options,
    available,
    build,
    get,
    register,
    source,
)

_SHARED = {"base", "densities", "nets", "plugins", "priors", "registry", "testing"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _SHARED and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "VAE",
    "LogWeightTerms",
    "UnknownVariantError",
    "VariantConfigError",
    "accepted_options",
    "available",
    "build",
    "get",
    "register",
    "source",
]
