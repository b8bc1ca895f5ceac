"""Proposer name -> class."""

from __future__ import annotations

from plugins.spec_decode.proposers.base import Proposer

_PROPOSERS: dict[str, type[Proposer]] = {}


def register_proposer(name: str):
    def wrap(cls: type[Proposer]) -> type[Proposer]:
        if name in _PROPOSERS and _PROPOSERS[name] is not cls:
            raise ValueError(f"proposer {name!r} is already registered")
        cls.name = name
        _PROPOSERS[name] = cls
        return cls

    return wrap


def proposer_names() -> list[str]:
    return sorted(_PROPOSERS)


def get_proposer_class(name: str) -> type[Proposer]:
    try:
        return _PROPOSERS[name]
    except KeyError:
        raise ValueError(f"unknown proposer {name!r}; available: {', '.join(proposer_names())}") from None
