"""The plugin options every command that builds an engine accepts: --plugins, --plugin-config NAME=PATH.yaml
and --plugin-option NAME.KEY=VALUE, merged (in that order) into the engine's (name, options) pairs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_plugin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugins", default="", help="comma-separated plugins to enable")
    p.add_argument("--plugin-config", action="append", default=[], metavar="NAME=PATH.yaml",
                   help="a plugin's options from a YAML mapping (enables the plugin); repeatable")
    p.add_argument("--plugin-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="one plugin option, VALUE parsed as YAML (enables the plugin), e.g. "
                        "kv_mixed_precision.preset=kv8; repeatable")


def plugin_specs(args: argparse.Namespace) -> tuple[tuple[str, dict], ...]:
    """Unknown plugin names and malformed values fail here with a ValueError, before any model loads."""
    import yaml

    from plugins.registry import get_plugin_class

    specs: dict[str, dict] = {n.strip(): {} for n in args.plugins.split(",") if n.strip()}
    for item in args.plugin_config:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--plugin-config expects NAME=PATH.yaml, got {item!r}")
        if not Path(path).is_file():
            raise ValueError(f"--plugin-config {name}: no such file {path!r} (for a single option use "
                             f"--plugin-option {name}.KEY=VALUE)")
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"--plugin-config {name}: {path} must hold a YAML mapping of options")
        specs.setdefault(name, {}).update(data)
    for item in args.plugin_option:
        key, sep, value = item.partition("=")
        name, dot, opt = key.partition(".")
        if not sep or not dot or not name or not opt:
            raise ValueError(f"--plugin-option expects NAME.KEY=VALUE, got {item!r}")
        specs.setdefault(name, {})[opt] = yaml.safe_load(value)
    for name in specs:
        get_plugin_class(name)
    return tuple(specs.items())
