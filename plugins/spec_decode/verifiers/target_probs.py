"""The target's next-token distribution at draft positions, processed exactly as the engine's sampler
does (temperature, top-k, top-p, min-p), so that verification compares like with like."""

from __future__ import annotations

import torch

from engine.request import Request
from engine.sampler import filter_logits


def can_process(req: Request) -> bool:
    """Penalties and min_tokens bans depend on the tokens before each position; such requests are left
    to the engine's own sampler, which applies them token by token."""
    p = req.params
    return not p.needs_penalties and (req.num_output_tokens >= p.min_tokens or not req.min_tokens_bans)


def target_probs(logits: torch.Tensor, req: Request) -> torch.Tensor:
    """logits: [n, V] raw -> [n, V] fp32 probabilities (temperature 1 for greedy requests)."""
    p = req.params
    if p.greedy:
        return torch.softmax(logits.float(), -1)
    rows = [filter_logits(logits[i].float() / p.temperature, p.top_k, p.top_p, p.min_p)
            for i in range(logits.shape[0])]
    return torch.softmax(torch.stack(rows), -1)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """p, q: [n, V] probabilities -> [n] KL(p || q); q's zeros are floored so the value stays finite."""
    logp = torch.log(p.clamp_min(1e-30))
    logq = torch.log(q.clamp_min(1e-10))
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)
