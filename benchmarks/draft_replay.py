"""Offline replay of speculative drafting over recorded samples. With a fixed seed, lossless speculation
emits exactly what the plain engine sampled, so a draft token is accepted exactly when it equals the
recorded next token, and the decode steps any drafting policy takes can be counted without running
the model. Policies draw on the `suffix` proposer's statistics (the family index and the weighted
window of recent requests); `tessera bench spec-bound` turns the counts into a speed-up bound."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from plugins.spec_decode.suffix_index import SuffixIndex


@dataclass(frozen=True)
class Family:
    prompt: list[int]
    samples: list[list[int]]


@dataclass(frozen=True)
class Replay:
    shapes: list[tuple[int, int]]  # per step: (active samples b, tokens verified M >= b)

    @property
    def steps(self) -> int:
        return len(self.shapes)

    @property
    def verified(self) -> int:
        return sum(m for _, m in self.shapes)


@dataclass
class Statistics:
    """What the `suffix` proposer drafts from: the family's index (prompt and every sibling's tokens so
    far) and the window of recent finished requests, whose counts weigh `recent_weight` as much."""

    family: SuffixIndex
    recent: SuffixIndex | None = None
    recent_weight: float = 0.5

    def next_tokens(self, tail: list[int]) -> dict[int, float]:
        """Next-token frequencies after the longest suffix of `tail` either index has seen (the
        proposer's rule), normalized."""
        fam = self.family
        for n in range(min(fam.max_n, len(tail)), fam.min_n - 1, -1):
            mine = fam.continuations(tail, n)
            theirs = self.recent.continuations(tail, n) if self.recent is not None and self.recent_weight > 0 else None
            if not mine and not theirs:
                continue
            scores: dict[int, float] = dict(mine) if mine else {}
            for t, c in (theirs or {}).items():
                scores[t] = scores.get(t, 0.0) + self.recent_weight * c
            total = sum(scores.values())
            return {t: c / total for t, c in scores.items()}
        return {}

    def ever_followed(self, tail: list[int], token: int) -> bool:
        """Whether `token` followed any suffix of `tail` (any length) in either index."""
        fam = self.family
        indexes = (fam, self.recent) if self.recent is not None and self.recent_weight > 0 else (fam,)
        for n in range(fam.min_n, min(fam.max_n, len(tail)) + 1):
            for index in indexes:
                if token in (index.continuations(tail, n) or ()):
                    return True
        return False


def _push(tail: list[int], token: int, max_n: int) -> list[int]:
    return (tail + [token])[-max_n:]


def _chain(stats: Statistics, tail: list[int], k: int, min_score: float) -> list[int]:
    out: list[int] = []
    score = 1.0
    while len(out) < k:
        dist = stats.next_tokens(tail)
        if not dist:
            break
        best = max(dist, key=dist.__getitem__)
        score *= dist[best]
        if score < min_score:
            break
        out.append(best)
        tail = _push(tail, best, stats.family.max_n)
    return out


def _tree(stats: Statistics, tail: list[int], nodes: int) -> set[tuple[int, ...]]:
    """Up to `nodes` draft paths (each a node of the tree), best first by the product of frequencies."""
    tree: set[tuple[int, ...]] = set()
    frontier = [(-1.0, ())]
    while frontier and len(tree) < nodes:
        neg, path = heapq.heappop(frontier)
        if path:
            tree.add(path)
        ctx = (tail + list(path))[-stats.family.max_n:]
        for token, freq in stats.next_tokens(ctx).items():
            heapq.heappush(frontier, (neg * freq, path + (token,)))
    return tree


def _oracle_accepts(stats: Statistics, tail: list[int], future: list[int]) -> int:
    """Future tokens a drafter with every seen continuation at hand gets accepted."""
    accepted = 0
    for token in future:
        if not stats.ever_followed(tail, token):
            break
        accepted += 1
        tail = _push(tail, token, stats.family.max_n)
    return accepted


def replay(family: Family, policy: str, k: int = 0, min_n: int = 1, max_n: int = 8,
           min_score: float = 0.1, recent: SuffixIndex | None = None, recent_weight: float = 0.5) -> Replay:
    """Steps (and verified tokens) for the family's samples to be emitted under `policy` ("plain",
    "chain" with k drafts, "tree" with k nodes, or "oracle"); samples step in lock-step, each
    emitting its accepted drafts plus one token per step. `recent`: the proposer's window of earlier
    requests, read only."""
    index = SuffixIndex(min_n, max_n)
    index.add(family.prompt, 0)
    stats = Statistics(index, recent, recent_weight)
    streams = [family.prompt + s for s in family.samples]
    pos = [0] * len(family.samples)
    fed = [0] * len(family.samples)
    shapes: list[tuple[int, int]] = []
    plen = len(family.prompt)
    while any(p < len(s) for p, s in zip(pos, family.samples, strict=True)):
        for i, s in enumerate(streams):  # every sibling's emitted tokens join the family index
            if pos[i] > fed[i]:
                index.add(s, plen + fed[i], plen + pos[i])
                fed[i] = pos[i]
        active = verified = 0
        for i, sample in enumerate(family.samples):
            if pos[i] >= len(sample):
                continue
            active += 1
            tail = streams[i][max(0, plen + pos[i] - max_n):plen + pos[i]]
            future = sample[pos[i]:]
            if policy == "plain":
                accepted, drafted = 0, 0
            elif policy == "chain":
                drafts = _chain(stats, tail, k, min_score)
                accepted = 0
                while accepted < min(len(drafts), len(future)) and drafts[accepted] == future[accepted]:
                    accepted += 1
                drafted = len(drafts)
            elif policy == "tree":
                tree = _tree(stats, tail, k)
                accepted = 0
                while accepted < len(future) and tuple(future[:accepted + 1]) in tree:
                    accepted += 1
                drafted = len(tree)
            elif policy == "oracle":
                accepted = _oracle_accepts(stats, tail, future)
                drafted = accepted
            else:
                raise ValueError(f"unknown policy {policy!r}; use plain, chain, tree or oracle")
            verified += 1 + drafted
            pos[i] = min(len(sample), pos[i] + accepted + 1)
        shapes.append((active, verified))
    return Replay(shapes)
