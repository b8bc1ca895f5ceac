"""Measured cost of decode steps, from the steps themselves: the time of a plain decode step at each
batch size, and the extra time one draft token adds to a step. Both are exponential moving averages,
so the estimate follows the machine's current load."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepCost:
    ema: float = 0.2
    min_plain: int = 3  # plain steps at a batch size before its time is trusted
    _plain: dict[int, float] = field(default_factory=dict)  # batch size -> seconds
    _plain_n: dict[int, int] = field(default_factory=dict)
    _per_draft: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.ema <= 1:
            raise ValueError(f"ema must be in (0, 1], got {self.ema}")

    def _avg(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.ema) * old + self.ema * new

    def observe(self, batch_size: int, num_drafts: int, seconds: float) -> None:
        """One decode-only step of `batch_size` requests that verified `num_drafts` draft tokens."""
        if num_drafts == 0:
            self._plain[batch_size] = self._avg(self._plain.get(batch_size), seconds)
            self._plain_n[batch_size] = self._plain_n.get(batch_size, 0) + 1
            return
        base = self.plain_step(batch_size)
        if base is not None:
            self._per_draft = self._avg(self._per_draft, max(0.0, seconds - base) / num_drafts)

    def plain_step(self, batch_size: int) -> float | None:
        if self._plain_n.get(batch_size, 0) < self.min_plain:
            return None
        return self._plain[batch_size]

    def estimate(self, batch_size: int) -> tuple[float, float] | None:
        """(seconds per token of a plain step, extra seconds per draft token) at this batch size, or
        None while either is unmeasured."""
        base = self.plain_step(batch_size)
        if base is None or self._per_draft is None:
            return None
        return base / batch_size, self._per_draft
