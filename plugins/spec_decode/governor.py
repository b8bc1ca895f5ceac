"""Safety under load: decides, each step and for each request, whether to speculate and with how many
drafts. Off above `max_batch_size` decoding requests; off for a request whose measured acceptance makes
speculation a loss under the measured step cost (its expected accepted tokens, valued at the per-token
time of a plain step, must repay `min_gain` times the time of verifying its drafts). A request switched
off is probed again every `probe_interval` steps so its acceptance estimate can recover."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from plugins.spec_decode.step_cost import StepCost


@dataclass
class _RequestStats:
    accept_ema: float | None = None
    off_steps: int = 0


@dataclass
class Governor:
    max_batch_size: int
    min_gain: float
    probe_interval: int
    adaptive_k: bool = True
    ema: float = 0.3
    cost: StepCost = field(default_factory=StepCost)
    _stats: dict[str, _RequestStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.min_gain < 0:
            raise ValueError(f"min_gain must be >= 0, got {self.min_gain}")
        if self.probe_interval < 1:
            raise ValueError(f"probe_interval must be >= 1, got {self.probe_interval}")
        if not 0 < self.ema <= 1:
            raise ValueError(f"ema must be in (0, 1], got {self.ema}")

    def batch_allows(self, batch_size: int) -> bool:
        return batch_size <= self.max_batch_size

    def draft_budget(self, request_id: str, k_max: int, batch_size: int) -> int:
        """Drafts to ask for this step: 0 switches speculation off for the request."""
        st = self._stats.setdefault(request_id, _RequestStats())
        if st.accept_ema is None:
            return k_max  # no evidence yet: try
        k = min(k_max, max(1, math.ceil(1.5 * st.accept_ema) + 1)) if self.adaptive_k else k_max
        est = self.cost.estimate(batch_size)
        if est is not None:
            per_token, per_draft = est
            if st.accept_ema * per_token < self.min_gain * per_draft * k:
                st.off_steps += 1
                if st.off_steps % self.probe_interval:
                    return 0
                return 1  # a cheap probe keeps the estimate fresh
        st.off_steps = 0
        return k

    def record(self, request_id: str, proposed: int, accepted: int) -> None:
        if proposed <= 0:
            return
        st = self._stats.setdefault(request_id, _RequestStats())
        value = float(accepted)
        st.accept_ema = value if st.accept_ema is None else (1 - self.ema) * st.accept_ema + self.ema * value

    def accept_estimate(self, request_id: str) -> float | None:
        st = self._stats.get(request_id)
        return None if st is None else st.accept_ema

    def forget(self, request_id: str) -> None:
        self._stats.pop(request_id, None)
