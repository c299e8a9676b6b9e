"""Plugin modules: the modules a suite's ``plugins = [...]`` and ``bench run --plugin MODULE`` name,
imported in the driver and again in every worker before any name is resolved.

A plugin module registers variants, objectives or datasets with the registries' own decorators
(``variants.register``, ``bench.objectives.register``, ``bench.data.register``) when imported.
The driver imports them (:func:`import_modules`) and every job carries a :class:`Plugins`: the
module names, and the ``sys.path`` entries under which the driver found those that are not
installed (a file or package in the working directory, say), so that a worker process, a Ray task
or a Slurm job imports the same modules (:func:`ensure`). On a Ray cluster elsewhere
(``--ray-address``) the paths do not exist: those modules travel in Ray's ``runtime_env``
(:func:`ray_modules`). Entry-point plugins (``variants.plugins``) need no carrying: a worker finds
them where the distribution is installed.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from types import ModuleType

from bench.errors import ConfigError


@dataclass(frozen=True)
class Plugins:
    """What a worker imports before it runs a job (plain data: it travels with the job)."""

    modules: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()  # sys.path entries the driver found modules under, outside site-packages


NO_PLUGINS = Plugins()


def _installed_roots() -> set[str]:
    paths = sysconfig.get_paths()
    return {os.path.realpath(paths[k]) for k in ("purelib", "platlib", "stdlib", "platstdlib") if k in paths}


def _root(name: str) -> str | None:
    """The sys.path entry ``name`` was imported from (``.../root/pkg/sub.py`` -> ``.../root``)."""
    top = sys.modules[name.split(".")[0]]
    where = getattr(top, "__file__", None)
    if where is None and getattr(top, "__path__", None):  # a namespace package
        return os.path.dirname(os.path.realpath(list(top.__path__)[0]))
    if where is None:
        return None
    where = os.path.realpath(where)
    return os.path.dirname(os.path.dirname(where)) if hasattr(top, "__path__") else os.path.dirname(where)


def _add_paths(paths) -> None:
    for p in paths:
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)


def import_modules(modules, where: str, before: Plugins = NO_PLUGINS) -> Plugins:
    """Import ``modules`` (their registrations run); a module that fails to import is a
    :class:`ConfigError` naming it and the exception (``where``: the suite file or ``--plugin``).
    Returns ``before`` with these modules and their non-installed roots added."""
    names, paths = list(before.modules), list(before.paths)
    installed = _installed_roots()
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: a plugin is a module name (a string), got {name!r}")
        try:
            importlib.import_module(name)
        except Exception as e:  # an import error, a syntax error, a clash of names (variants.plugins.PluginError)
            raise ConfigError(f"{where}: plugin module {name!r} failed to import: {type(e).__name__}: {e}") from None
        root = _root(name)
        if root and root not in installed and root not in paths:
            paths.append(root)
        if name not in names:
            names.append(name)
    return Plugins(tuple(names), tuple(paths))


def ensure(plugins: Plugins) -> None:
    """In a worker: the plugin modules imported (with the driver's paths for those not installed)
    before the job resolves a name. Already imported modules cost nothing."""
    _add_paths(plugins.paths)
    import_modules(plugins.modules, "worker")


def ray_modules(plugins: Plugins) -> list[ModuleType]:
    """The top-level packages (or single-file modules) of the plugin modules that are not
    installed, for Ray's ``runtime_env["py_modules"]`` on a cluster elsewhere. Installed ones
    (in site-packages) must be installed on the cluster's nodes as well."""
    installed = _installed_roots()
    out: list[ModuleType] = []
    for name in plugins.modules:
        top = sys.modules[name.split(".")[0]]
        root = _root(name)
        if root and root not in installed and top not in out:
            out.append(top)
    return out
