"""SiLU-and-mul for CUDA in one pass over [gate | up] (the reference reads the input twice and writes
an intermediate). silu(gate) is rounded to the input dtype before the multiply, as the reference's
two elementwise ops do."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.registry import register_kernel
from engine.kernels.triton_availability import triton_cuda_available
from engine.kernels.triton_rounding import round_as, rounding_mode

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_xt, inter, BLOCK: tl.constexpr, ROUND: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    g = tl.load(x_ptr + t * stride_xt + offs, mask=mask, other=0.0)
    u = tl.load(x_ptr + t * stride_xt + inter + offs, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    s = round_as(gf / (1.0 + tl.exp(-gf)), ROUND)
    y = (s * u.to(tl.float32)).to(g.dtype)
    tl.store(out_ptr + t * inter + offs, y, mask=mask)


@register_kernel("silu_and_mul", "cuda", available=triton_cuda_available, name="triton_silu_and_mul")
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2*I] laid out as [gate | up]. Returns silu(gate) * up: [T, I]."""
    t, width = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    inter = width // 2
    out = torch.empty((t, inter), dtype=x.dtype, device=x.device)
    if t:
        _silu_and_mul_kernel[(t, triton.cdiv(inter, BLOCK))](x, out, x.stride(0), inter, BLOCK=BLOCK,
                                                             ROUND=rounding_mode(x.dtype), num_warps=4)
    return out
