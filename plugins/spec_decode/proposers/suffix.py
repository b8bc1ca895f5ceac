"""Suffix drafting: the request's tail is matched against suffix statistics of the request itself, its
sibling samples (n > 1 shares one family index) and a sliding window of recent finished requests. Each
draft token is the most frequent continuation of the longest matching suffix (family counts plus
`global_weight` times recent-request counts); drafting stops when the product of the continuation
frequencies falls below `min_score`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.request import Request
from plugins.spec_decode.proposal import Proposal
from plugins.spec_decode.proposers.base import Proposer
from plugins.spec_decode.proposers.registry import register_proposer
from plugins.spec_decode.suffix_index import SuffixIndex


@dataclass
class _Family:
    """All samples of one user request: one prompt, one index over the prompt and every output."""

    index: SuffixIndex
    members: dict[str, Request] = field(default_factory=dict)
    fed: dict[str, int] = field(default_factory=dict)  # tokens of each member already counted
    done: list[list[int]] = field(default_factory=list)  # finished members' streams


@register_proposer("suffix")
class SuffixProposer(Proposer):
    def __init__(self, min_n: int, max_n: int, min_score: float, global_weight: float,
                 max_recent: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"suffix needs 1 <= min_n <= max_n, got {min_n}, {max_n}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"suffix min_score must be in [0, 1], got {min_score}")
        if global_weight < 0 or max_recent < 0:
            raise ValueError("suffix global_weight and max_recent must be >= 0")
        self.min_n, self.max_n = min_n, max_n
        self.min_score = min_score
        self.global_weight = global_weight
        self.max_recent = max_recent
        self._families: dict[str, _Family] = {}
        self._recent = SuffixIndex(min_n, max_n)
        self._recent_streams: deque[list[int]] = deque()

    @classmethod
    def build(cls, plugin: Any, engine: Any) -> SuffixProposer:
        return cls(plugin.suffix_min_n, plugin.suffix_max_n, plugin.suffix_min_score,
                   plugin.suffix_global_weight, plugin.suffix_max_recent)

    def _family(self, req: Request) -> _Family:
        fam = self._families.get(req.parent_id)
        if fam is None:
            fam = self._families[req.parent_id] = _Family(SuffixIndex(self.min_n, self.max_n))
            fam.index.add(req.prompt_token_ids, 0)
        if req.request_id not in fam.members:
            fam.members[req.request_id] = req
            fam.fed[req.request_id] = req.num_prompt_tokens
        return fam

    def _sync(self, fam: _Family) -> None:
        for rid, member in fam.members.items():
            stream = member.all_token_ids
            if len(stream) > fam.fed[rid]:
                fam.index.add(stream, fam.fed[rid])
                fam.fed[rid] = len(stream)

    def propose(self, requests: list[Request], ks: dict[str, int]) -> dict[str, Proposal]:
        out: dict[str, Proposal] = {}
        for req in requests:
            fam = self._family(req)  # registered even without drafts, so siblings see its output
            k = ks.get(req.request_id, 0)
            if k <= 0:
                continue
            self._sync(fam)
            tokens = self._walk(fam.index, req.all_token_ids[-self.max_n:], k)
            if tokens:
                out[req.request_id] = Proposal(tokens)
        return out

    def _walk(self, local: SuffixIndex, tail: list[int], k: int) -> list[int]:
        drafts: list[int] = []
        score = 1.0
        use_recent = self.global_weight > 0 and len(self._recent) > 0
        while len(drafts) < k:
            best, prob = self._next_token(local, tail, use_recent)
            if best is None:
                break
            score *= prob
            if score < self.min_score:
                break
            drafts.append(best)
            tail = (tail + [best])[-self.max_n:]
        return drafts

    def _next_token(self, local: SuffixIndex, tail: list[int], use_recent: bool) -> tuple[int | None, float]:
        for n in range(min(self.max_n, len(tail)), self.min_n - 1, -1):
            mine = local.continuations(tail, n)
            theirs = self._recent.continuations(tail, n) if use_recent else None
            if not mine and not theirs:
                continue
            scores: dict[int, float] = dict(mine) if mine else {}
            for t, c in (theirs or {}).items():
                scores[t] = scores.get(t, 0.0) + self.global_weight * c
            best = max(scores, key=scores.__getitem__)
            return best, scores[best] / sum(scores.values())
        return None, 0.0

    def release(self, request: Request) -> None:
        fam = self._families.get(request.parent_id)
        if fam is None or request.request_id not in fam.members:
            return
        self._sync(fam)
        del fam.members[request.request_id]
        fam.done.append(request.all_token_ids)
        if fam.members:
            return
        del self._families[request.parent_id]
        if self.max_recent == 0:
            return
        for stream in fam.done:
            self._recent.add(stream, 0)
            self._recent_streams.append(stream)
        while len(self._recent_streams) > self.max_recent:
            self._recent.remove(self._recent_streams.popleft())
