"""What a proposer hands to the verifier for one request."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class Proposal:
    tokens: list[int]
    # [len(tokens), V] fp32 draft distribution each token was drawn from; None for deterministic
    # drafts (n-gram, suffix), which count as one-hot
    probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.probs is not None and self.probs.shape[0] != len(self.tokens):
            raise ValueError(f"draft probs have {self.probs.shape[0]} rows for {len(self.tokens)} tokens")
