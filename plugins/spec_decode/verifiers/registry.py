"""Verifier name -> instance. A verifier decides, per request, how many drafts to keep; returning None
leaves the request to the engine's default sample-and-compare, which is exact for greedy decoding and
for deterministic drafts."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

    from engine.request import Request
    from plugins.base import Verdict
    from plugins.spec_decode.proposal import Proposal


class Verifier:
    name: ClassVar[str] = ""

    def verify(self, req: Request, proposal: Proposal, logits: torch.Tensor, tau: float) -> Verdict | None:
        """logits: [len(proposal.tokens) + 1, V] raw target logits at the draft positions and after."""
        raise NotImplementedError


_VERIFIERS: dict[str, type[Verifier]] = {}


def register_verifier(name: str):
    def wrap(cls: type[Verifier]) -> type[Verifier]:
        if name in _VERIFIERS and _VERIFIERS[name] is not cls:
            raise ValueError(f"verifier {name!r} is already registered")
        cls.name = name
        _VERIFIERS[name] = cls
        return cls

    return wrap


def verifier_names() -> list[str]:
    return sorted(_VERIFIERS)


def create_verifier(name: str) -> Verifier:
    try:
        return _VERIFIERS[name]()
    except KeyError:
        raise ValueError(f"unknown verifier {name!r}; available: {', '.join(verifier_names())}") from None
