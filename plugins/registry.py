"""Name -> plugin class. Built-ins register by decorator; third parties through the entry-point
group `tessera.plugins`."""

from __future__ import annotations

import dataclasses
from importlib.metadata import entry_points

from engine.registry import Registry
from plugins.base import Plugin

_REGISTRY: Registry[type[Plugin]] = Registry("plugin")
_ENTRY_POINTS_LOADED = False


def register_plugin(name: str):
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"plugin name must be snake_case alphanumerics, got {name!r}")
    return _REGISTRY.register(name)


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
    return _REGISTRY.names()


def get_plugin_class(name: str) -> type[Plugin]:
    _load_entry_points()
    return _REGISTRY.get(name)


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
