"""Name -> plugin class. Built-ins register by decorator; third parties through the entry-point
group `tessera.plugins`."""

from __future__ import annotations

import dataclasses
from importlib.metadata import entry_points

from plugins.base import Plugin

_REGISTRY: dict[str, type[Plugin]] = {}
_ENTRY_POINTS_LOADED = False


def register_plugin(name: str):
    def wrap(cls: type[Plugin]) -> type[Plugin]:
        if not name or not name.replace("_", "").isalnum():
            raise ValueError(f"plugin name must be snake_case alphanumerics, got {name!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"plugin {name!r} is already registered by {existing.__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtin_plugins() -> None:
    """Imports every sub-package of `plugins/`: each registers its plugin by decorator."""
    import importlib
    import pkgutil

    import plugins

    for info in pkgutil.iter_modules(plugins.__path__):
        if info.ispkg:
            importlib.import_module(f"plugins.{info.name}")


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    _load_builtin_plugins()
    for ep in entry_points(group="tessera.plugins"):
        cls = ep.load()
        if ep.name not in _REGISTRY:
            register_plugin(ep.name)(cls)


def list_plugins() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_plugin_class(name: str) -> type[Plugin]:
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown plugin {name!r}; available: {', '.join(list_plugins()) or 'none'}") from None


def create_plugin(name: str, options: dict | None = None) -> Plugin:
    """Builds a plugin from its hyperparameters; unknown or ill-typed fields raise ValueError."""
    cls = get_plugin_class(name)
    options = dict(options or {})
    if dataclasses.is_dataclass(cls):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"plugin {name!r} has no option(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for plugin {name!r}: {exc}") from exc
