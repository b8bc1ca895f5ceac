"""Temperature / top-k / top-p / min-p sampling for many rows at once, for the GPU: one sort and one
multinomial draw over the whole batch and a single transfer of the sampled ids, instead of a filter,
a draw and a host sync per request. Same filtering rules as engine.sampler.filter_logits, applied
row-wise with per-row parameters."""

from __future__ import annotations

import torch


def filter_logits_batched(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                          min_p: torch.Tensor) -> torch.Tensor:
    """logits: [R, V] (already divided by temperature); top_k: [R] int (<= 0 or >= V: off); top_p,
    min_p: [R] float (1.0 / 0.0: off). Returns [R, V] with the filtered entries at -inf."""
    vocab = logits.shape[1]
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    use_k = ((top_k > 0) & (top_k < vocab)).unsqueeze(1)
    kth = sorted_logits.gather(1, (top_k.clamp(1, vocab) - 1).unsqueeze(1))
    kth = torch.where(use_k, kth, neg_inf)
    logits = logits.masked_fill(logits < kth, float("-inf"))
    # top-p over what top-k kept: the mass before a token already reaching top_p drops it
    sorted_kept = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    probs_sorted = sorted_kept.softmax(-1)
    drop_sorted = ((probs_sorted.cumsum(-1) - probs_sorted) >= top_p.unsqueeze(1)) & (top_p < 1.0).unsqueeze(1)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    low = probs < min_p.unsqueeze(1) * probs.max(-1, keepdim=True).values
    return logits.masked_fill(low & (min_p > 0.0).unsqueeze(1), float("-inf"))


def sample_batched(logits: torch.Tensor, params: list) -> torch.Tensor:
    """logits: [R, V] fp32 (penalties already applied), params: R SamplingParams (non-greedy).
    Returns the sampled ids [R] on logits' device; the caller reads them with one transfer."""
    dev = logits.device
    temps = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=dev)
    top_k = torch.tensor([p.top_k for p in params], dtype=torch.long, device=dev)
    top_p = torch.tensor([p.top_p for p in params], dtype=logits.dtype, device=dev)
    min_p = torch.tensor([p.min_p for p in params], dtype=logits.dtype, device=dev)
    filtered = filter_logits_batched(logits / temps.unsqueeze(1), top_k, top_p, min_p)
    return torch.multinomial(filtered.softmax(-1), 1).squeeze(1)
