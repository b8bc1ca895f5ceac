"""Frequency-weighted suffix statistics over many token streams: for every suffix of length
min_n..max_n seen so far, how often each token followed it. Counts can be removed again, so a bounded
window of recent requests can slide."""

from __future__ import annotations


class SuffixIndex:
    def __init__(self, min_n: int, max_n: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self._counts: dict[tuple[int, ...], dict[int, int]] = {}

    def add(self, stream: list[int], start: int, end: int | None = None, sign: int = 1) -> None:
        """Counts stream[i] as the continuation of its preceding suffixes, for start <= i < end."""
        counts = self._counts
        end = len(stream) if end is None else end
        for i in range(max(start, 1), end):
            t = stream[i]
            for n in range(self.min_n, min(self.max_n, i) + 1):
                key = tuple(stream[i - n:i])
                row = counts.get(key)
                if row is None:
                    if sign < 0:
                        continue
                    row = counts[key] = {}
                c = row.get(t, 0) + sign
                if c > 0:
                    row[t] = c
                else:
                    row.pop(t, None)
                    if not row:
                        del counts[key]

    def remove(self, stream: list[int]) -> None:
        self.add(stream, 0, None, sign=-1)

    def continuations(self, tail: list[int], n: int) -> dict[int, int] | None:
        """Next-token counts after the last n tokens of `tail` (None when never seen)."""
        if n > len(tail):
            return None
        return self._counts.get(tuple(tail[len(tail) - n:]))

    def __len__(self) -> int:
        return len(self._counts)
