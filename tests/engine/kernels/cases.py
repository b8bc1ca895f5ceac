"""Shapes and inputs shared by the kernel tests: the attention geometry, the engine's head-major cache
layout built from token-major caches, and the hidden states the greedy head must get right."""

from __future__ import annotations

import torch

BS, KVH, D, H = 16, 3, 64, 9


def head_major(kc: torch.Tensor, vc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-major caches [NB, bs, KVH, D] as the engine's head-major pair: views of one
    [NB, KVH, 2, D * bs] tensor, keys [NB, KVH, D, bs] and values [NB, KVH, bs, D]."""
    nb, bs, kvh, d = kc.shape
    cache = torch.stack([kc.permute(0, 2, 3, 1).reshape(nb, kvh, d * bs),
                         vc.permute(0, 2, 1, 3).reshape(nb, kvh, d * bs)], 2).contiguous()
    return cache[:, :, 0].view(nb, kvh, d, bs), cache[:, :, 1].view(nb, kvh, bs, d)


def greedy_head_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, LM head weight [V, D], hidden states [R, D]) that test what the greedy head must get right:
    a vocabulary and width that are not multiples of the kernel's 16 tokens and 4 features, a few
    features far larger than the rest (as in real final hidden states), exact ties between duplicated
    tokens, near-ties one rounding apart, non-finite rows, an all-zero row, and flat rows with more
    candidates than the screen keeps."""
    g = torch.Generator().manual_seed(3)
    v, d = 1003, 90
    w = torch.randn(v, d, generator=g) * 0.1
    w[700] = w[5]  # duplicates: every row ties them exactly; the first must win
    w[900] = w[37] * (1 + 2 ** -20)  # a near-tie
    h = torch.randn(40, d, generator=g) * 2
    h[:, 7] *= 30  # massive features
    h[:, 60] *= -12
    h[3] = w[5] * 50  # token 5 (and its duplicate) the best by far
    h[4] = w[37] * 50  # 37 and its near-tie
    h[5] = 0.0  # every logit 0, every token a candidate: token 0
    h[6, 11] = float("nan")
    h[7, 2] = float("inf")
    cases = [("mixed", w, h), ("one row", w, h[3:4].clone())]
    # tokens that differ by less than the int8 screen can tell: all of them candidates
    big = torch.randn(1, 64, generator=g) + torch.randn(49152 + 5, 64, generator=g) * 1e-6
    cases.append(("flat, over the candidate cap", big, torch.randn(3, 64, generator=g)))
    return cases
