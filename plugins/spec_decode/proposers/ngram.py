"""Prompt lookup: the tail of the request (prompt and output) is matched against its earlier tokens and
what followed the latest match is proposed."""

from __future__ import annotations

from typing import Any

from engine.request import Request
from plugins.spec_decode.ngram_index import NgramIndex
from plugins.spec_decode.proposal import Proposal
from plugins.spec_decode.proposers.base import Proposer
from plugins.spec_decode.proposers.registry import register_proposer


@register_proposer("ngram")
class NgramProposer(Proposer):
    def __init__(self, min_n: int, max_n: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"ngram needs 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self._indexes: dict[str, NgramIndex] = {}

    @classmethod
    def build(cls, plugin: Any, engine: Any) -> NgramProposer:
        return cls(plugin.ngram_min_n, plugin.ngram_max_n)

    def propose(self, requests: list[Request], ks: dict[str, int]) -> dict[str, Proposal]:
        out: dict[str, Proposal] = {}
        for req in requests:
            k = ks.get(req.request_id, 0)
            if k <= 0:
                continue
            index = self._indexes.get(req.request_id)
            if index is None:
                index = self._indexes[req.request_id] = NgramIndex(self.min_n, self.max_n)
            index.sync(req.all_token_ids)
            tokens = index.lookup(k)
            if tokens:
                out[req.request_id] = Proposal(tokens)
        return out

    def release(self, request: Request) -> None:
        self._indexes.pop(request.request_id, None)
