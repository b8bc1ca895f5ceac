"""Name -> class, the one shape behind the engine's and the plugins' registries (KV storages, plugins,
speculative proposers and verifiers): implementations register by decorator and are looked up by the
name a config gives, with the known names in the error when the name is wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind  # what the entries are, for messages: "proposer", "KV storage", ...
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: registers the class under `name` and sets its `name` attribute. Registering a
        different class under a taken name is an error; re-registering the same class (a module imported
        twice) is not."""
        def wrap(cls: T) -> T:
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered by {existing.__module__}")
            cls.name = name
            self._classes[name] = cls
            return cls

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._classes[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}") from None

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes
