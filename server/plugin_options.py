"""Per-request plugin options: `"plugins": {"<name>": {...}}` in the body, validated against each plugin's
own pydantic model so that a bad option is a 400 naming it, not a crash inside the engine.

`vllm_xargs` is accepted as an alias, either `{"<plugin>": {...}}` or flat `{"<plugin>.<option>": value}`
(vLLM clients can only send flat scalars there). Its keys that name no registered plugin are ignored: they
are meant for some other server's extensions, like any unknown field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from plugins.registry import get_plugin_class, list_plugins
from server.errors import bad_request
from server.protocol import SamplingFields


def _from_xargs(xargs: dict[str, Any], known: set[str]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for key, value in xargs.items():
        name, _, option = key.partition(".")
        if name not in known:
            continue
        if option:
            merged.setdefault(name, {})[option] = value
        elif isinstance(value, dict):
            merged.setdefault(name, {}).update(value)
        else:
            raise bad_request(f"vllm_xargs[{key!r}] must be an object of options for plugin {name!r}",
                              param=f"vllm_xargs.{key}")
    return merged


def _first_error(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'options'}: {e.get('msg')}" for e in errs[:3]]
    return "; ".join(parts)


def resolve_plugin_options(body: SamplingFields, enabled: tuple[str, ...]) -> dict[str, dict] | None:
    """Validated options by plugin name, or None when the request sets none."""
    requested: dict[str, dict[str, Any]] = {}
    if body.vllm_xargs:
        requested.update(_from_xargs(body.vllm_xargs, set(list_plugins())))
    for name, options in (body.plugins or {}).items():
        requested.setdefault(name, {}).update(options)
    if not requested:
        return None
    validated: dict[str, dict] = {}
    for name, options in requested.items():
        if name not in enabled:
            available = ", ".join(enabled) or "none"
            raise bad_request(f"plugin {name!r} is not enabled on this server (enabled: {available})",
                              param=f"plugins.{name}", code="plugin_not_enabled")
        try:
            cls = get_plugin_class(name)
            validated[name] = cls.request_options.model_validate(options).model_dump()
        except ValidationError as exc:
            raise bad_request(f"invalid options for plugin {name!r}: {_first_error(exc)}",
                              param=f"plugins.{name}") from exc
        except ValueError as exc:
            raise bad_request(str(exc), param=f"plugins.{name}") from exc
    return validated
