"""The proposer contract: draft tokens for decoding requests, chosen by name from the registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from engine.request import Request
    from plugins.spec_decode.proposal import Proposal


class Proposer:
    name: ClassVar[str] = ""
    # True when proposals carry draft distributions (model drafts); the judge needs them
    gives_probs: ClassVar[bool] = False

    @classmethod
    def build(cls, plugin: Any, engine: Any) -> Proposer:
        """Builds the proposer from the plugin's hyperparameters and the running engine."""
        raise NotImplementedError

    def propose(self, requests: list[Request], ks: dict[str, int]) -> dict[str, Proposal]:
        """Up to ks[request_id] draft tokens for each request (requests without drafts are left out)."""
        raise NotImplementedError

    def release(self, request: Request) -> None:
        """The request finished: drop its state."""

    def close(self) -> None:
        """Engine stop."""
