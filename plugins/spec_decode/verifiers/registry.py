"""Verifier name -> instance. A verifier decides, per request, how many drafts to keep; returning None
leaves the request to the engine's default sample-and-compare, which is exact for greedy decoding and
for deterministic drafts."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from engine.registry import Registry

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


VERIFIERS: Registry[type[Verifier]] = Registry("verifier")
register_verifier = VERIFIERS.register


def verifier_names() -> list[str]:
    return VERIFIERS.names()


def create_verifier(name: str) -> Verifier:
    return VERIFIERS.get(name)()
