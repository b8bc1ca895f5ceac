"""Prompt lookup over one token stream: for every n-gram (min_n <= n <= max_n) the position of the token
that followed its latest occurrence, kept incrementally so a lookup costs a few dict probes."""

from __future__ import annotations


class NgramIndex:
    def __init__(self, min_n: int, max_n: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}

    def sync(self, tokens: list[int]) -> None:
        """Catches up with a stream that only grows (prompt, then output)."""
        if len(tokens) > len(self.tokens):
            self.extend(tokens[len(self.tokens):])

    def extend(self, new_tokens: list[int]) -> None:
        toks = self.tokens
        for t in new_tokens:
            j = len(toks)
            # an n-gram is indexed only once a token follows it, so the stream's own tail never
            # matches itself
            for n in range(self.min_n, min(self.max_n, j) + 1):
                self._next[tuple(toks[j - n:j])] = j
            toks.append(t)

    def lookup(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest earlier match of the stream's tail."""
        toks = self.tokens
        length = len(toks)
        for n in range(min(self.max_n, length), self.min_n - 1, -1):
            j = self._next.get(tuple(toks[length - n:]))
            if j is None:
                continue
            out: list[int] = []
            for i in range(k):
                # a match running into the tail continues periodically through the draft itself
                idx = j + i
                out.append(toks[idx] if idx < length else out[idx - length])
            return out
        return []
