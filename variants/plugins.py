"""Where each registered name comes from, and the entry points that bring names from outside.

Each of the three registries (``variants.registry``, ``bench.objectives.registry``, ``bench.data``)
keeps its dict filled by its decorator and one :class:`Provenance` beside it, which

* records each name's source: ``built-in`` (a module of the registry's own package),
  ``entry point DIST:MODULE`` (an installed distribution's entry point in the registry's group,
  ``vaebench.variants``, ``vaebench.objectives`` or ``vaebench.datasets``), or ``plugin module
  MODULE`` (a module imported by ``--plugin`` or a suite's ``plugins = [...]``: it registered the
  name with the decorator);
* refuses a clash: a plugin that registers a built-in name, or two plugins (entry points or
  modules) with one name, is a :class:`PluginError` naming both sources. Built-in names always
  resolve to the built-in: they never consult an entry point;
* discovers the entry points lazily: their *names* are listed (``importlib.metadata``, no import)
  when a registry's ``available()`` is asked, and an entry point's object is imported only when its
  name is first resolved (``get``/``spec``/``load``), or by :meth:`Provenance.load_all`.

An entry point ``my-vae = "mylab.vaes:MyVAE"`` in the group ``vaebench.variants`` makes
``my-vae`` buildable; the object may also register itself with the decorator on import (under
the same name).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

BUILTIN = "built-in"
_loading: list[str] = []  # the entry point being imported (its source), innermost last


class PluginError(ValueError):
    """A plugin that cannot be used: a clash of names, or an entry point that fails to import."""


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Provenance:
    """The sources of one registry's names and its entry-point group (see the module docstring).

    ``kind``: what a name is (``"variant"``); ``group``: the entry-point group; ``builtin``: the
    module prefix of the built-ins (``"variants."``); ``registry``: the registry's dict, name ->
    object; ``add(name, obj)``: what registering an entry point's object does when its import did
    not register the name itself (the decorator, or ``None``: the object must register itself);
    ``unwrap(entry)``: the registered object from a registry entry (an objective's spec holds it).
    """

    def __init__(self, kind: str, group: str, builtin: str, registry: dict,
                 add: Callable[[str, object], None] | None, unwrap: Callable[[object], object] = lambda e: e) -> None:
        self.kind, self.group, self.builtin, self.registry = kind, group, builtin, registry
        self.add, self.unwrap = add, unwrap
        self.sources: dict[str, str] = {}
        self._eps: dict[str, importlib.metadata.EntryPoint] | None = None

    # -- sources and clashes -----------------------------------------------------------------------
    def source_of(self, obj) -> str:
        """The source of an object being registered now (see the module docstring)."""
        if _loading:
            return _loading[-1]
        module = getattr(obj, "__module__", "") or ""
        return BUILTIN if module.startswith(self.builtin) else f"plugin module {module}"

    def claim(self, name: str, obj) -> bool:
        """Called by the registry's decorator before it stores ``obj`` under ``name``: records the
        source; a clash is a :class:`PluginError` (a plain ``ValueError`` between two built-ins).
        Returns False when ``obj`` is already registered under ``name`` (nothing to do)."""
        source = self.source_of(obj)
        if name in self.registry:
            old = self.unwrap(self.registry[name])
            if old is obj:
                return False
            old_source = self.sources.get(name, BUILTIN)
            if source == BUILTIN and old_source == BUILTIN:
                raise ValueError(f"{self.kind} {name!r} registered twice ({_qualname(old)} and {_qualname(obj)})")
            what = "a built-in name" if old_source == BUILTIN else "a name another plugin registered"
            raise PluginError(f"{self.kind} {name!r}: {source} ({_qualname(obj)}) registers {what}, held by "
                              f"{old_source} ({_qualname(old)}); rename one of them")
        if source != BUILTIN and not source.startswith("entry point"):  # a module, beside the entry points
            ep = self.entry_points().get(name)
            if ep is not None and ep.module != obj.__module__:
                raise PluginError(f"{self.kind} {name!r}: {source} ({_qualname(obj)}) registers a name that "
                                  f"{self._ep_source(ep)} ({ep.value}) provides; rename one of them")
        self.sources[name] = source
        return True

    # -- entry points ------------------------------------------------------------------------------
    @staticmethod
    def _ep_source(ep: importlib.metadata.EntryPoint) -> str:
        dist = ep.dist.name if ep.dist is not None else "?"
        return f"entry point {dist}:{ep.module}"

    def entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        """The group's entry points by name (listed once; :meth:`refresh` lists them again). A
        built-in name among them, or one name from two distributions, is a :class:`PluginError`."""
        if self._eps is None:
            eps: dict[str, importlib.metadata.EntryPoint] = {}
            for ep in importlib.metadata.entry_points(group=self.group):
                if ep.name in eps and eps[ep.name].value != ep.value:
                    raise PluginError(f"{self.kind} {ep.name!r} comes from two entry points: {self._ep_source(eps[ep.name])} "
                                      f"({eps[ep.name].value}) and {self._ep_source(ep)} ({ep.value}); uninstall one")
                if self.sources.get(ep.name) == BUILTIN:
                    raise PluginError(f"{self.kind} {ep.name!r}: {self._ep_source(ep)} ({ep.value}) registers a built-in "
                                      f"name, held by {BUILTIN} ({_qualname(self.unwrap(self.registry[ep.name]))}); "
                                      "rename the entry point")
                eps.setdefault(ep.name, ep)
            self._eps = eps
        return self._eps

    def refresh(self) -> None:
        """List the entry points again at the next look-up (after an install, or a change of sys.path)."""
        self._eps = None

    def names(self) -> set[str]:
        """Registered names and the names of entry points not loaded yet."""
        return set(self.registry) | set(self.entry_points())

    def load(self, name: str) -> bool:
        """Import the entry point ``name`` if it exists and is not registered yet; True if ``name``
        is registered afterwards."""
        if name in self.registry:
            return True
        ep = self.entry_points().get(name)
        if ep is None:
            return False
        source = self._ep_source(ep)
        _loading.append(source)
        try:
            try:
                obj = ep.load()
            except Exception as e:
                raise PluginError(f"{self.kind} {name!r}: {source} ({ep.value}) failed to import: "
                                  f"{type(e).__name__}: {e}") from None
            if name not in self.registry:
                if self.add is None:
                    raise PluginError(f"{self.kind} {name!r}: {source} ({ep.value}) did not register {name!r} when imported; "
                                      f"decorate it with the {self.kind} registry's @register({name!r}, ...)")
                self.add(name, obj)
        finally:
            _loading.pop()
        return True

    def load_all(self) -> None:
        """Import every entry point of the group (``bench list`` shows them all)."""
        for name in sorted(self.entry_points()):
            self.load(name)
