"""Objectives / gradient estimators. See ``registry`` for the contract.

Every module of this package registers its objectives on import; importing the package imports
them all.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.objectives.registry import (
    Estimate,
    NotApplicableError,
    ObjectiveSpec,
    TrainableObjective,
    UnknownObjectiveError,
    applicable,
    applies_to,
    available,
    backward,
    build,
    check_applies,
    fit,
    gradients,
    own_parameters,
    register,
    source,
    spec,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "registry" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "Estimate",
    "NotApplicableError",
    "ObjectiveSpec",
    "TrainableObjective",
    "UnknownObjectiveError",
    "applicable",
    "applies_to",
    "available",
    "backward",
    "build",
    "check_applies",
    "fit",
    "gradients",
    "own_parameters",
    "register",
    "source",
    "spec",
]
