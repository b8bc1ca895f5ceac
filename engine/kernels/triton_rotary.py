"""Rotary embedding (NeoX rotate-half, as HF Llama/Qwen) for CUDA: queries and keys of one token in one
program instead of the reference's chunk/neg/cat/mul/add chain per tensor. Each product and the sum
are rounded to the input dtype as the reference's elementwise ops do, so results match it bit for bit."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.registry import register_kernel
from engine.kernels.triton_availability import triton_cuda_available
from engine.kernels.triton_rounding import round_as, rounding_mode


@triton.jit
def _rotate(x_ptr, out_ptr, c1, s1, c2, s2, t, stride_t, stride_h, heads, HALF: tl.constexpr,
            BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, ROUND: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = (offs_h[:, None] < heads) & (offs_d[None, :] < HALF)
    src = x_ptr + t * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = round_as(x1 * c1[None, :], ROUND) + round_as(-x2 * s1[None, :], ROUND)
    o2 = round_as(x2 * c2[None, :], ROUND) + round_as(x1 * s2[None, :], ROUND)
    dst = out_ptr + t * heads * (2 * HALF) + offs_h[:, None] * (2 * HALF) + offs_d[None, :]
    tl.store(dst, o1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, o2.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, stride_qt, stride_qh, stride_kt,
                   stride_kh, stride_ct, stride_st, num_q, num_k, HALF: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, ROUND: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    dmask = offs_d < HALF
    c1 = tl.load(cos_ptr + t * stride_ct + offs_d, mask=dmask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + t * stride_ct + HALF + offs_d, mask=dmask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + t * stride_st + offs_d, mask=dmask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + t * stride_st + HALF + offs_d, mask=dmask, other=0.0).to(tl.float32)
    _rotate(q_ptr, qo_ptr, c1, s1, c2, s2, t, stride_qt, stride_qh, num_q, HALF, BLOCK_H, BLOCK_HALF, ROUND)
    _rotate(k_ptr, ko_ptr, c1, s1, c2, s2, t, stride_kt, stride_kh, num_k, HALF, BLOCK_H, BLOCK_HALF, ROUND)


@register_kernel("rotary", "cuda", available=triton_cuda_available, name="triton_rotary")
def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q: [T, H, D], k: [T, KVH, D] (last dim contiguous; views of the QKV output are fine),
    cos/sin: [T, D] already indexed by position. Returns new contiguous (q, k)."""
    t, heads, dim = q.shape
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if t:
        half = dim // 2
        _rotary_kernel[(t,)](q, k, cos, sin, q_out, k_out, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                             cos.stride(0), sin.stride(0), heads, k.shape[1], HALF=half,
                             BLOCK_H=triton.next_power_of_2(max(heads, k.shape[1])),
                             BLOCK_HALF=triton.next_power_of_2(half), ROUND=rounding_mode(q.dtype),
                             num_warps=4)
    return q_out, k_out
