"""Proposer name -> class."""

from __future__ import annotations

from engine.registry import Registry
from plugins.spec_decode.proposers.base import Proposer

PROPOSERS: Registry[type[Proposer]] = Registry("proposer")
register_proposer = PROPOSERS.register


def proposer_names() -> list[str]:
    return PROPOSERS.names()


def get_proposer_class(name: str) -> type[Proposer]:
    return PROPOSERS.get(name)
