"""Rounding an fp32 value to a narrower float inside a Triton kernel, kept as fp32. A plain
`.to(bf16).to(fp32)` round trip may be folded away by the compiler; the integer form cannot be, so
kernels that promise the reference's per-op rounding use this."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NONE, BF16, FP16 = 0, 1, 2


def rounding_mode(dtype: torch.dtype) -> int:
    return {torch.bfloat16: BF16, torch.float16: FP16}.get(dtype, NONE)


@triton.jit
def round_as(x, MODE: tl.constexpr):
    """x: fp32 tensor -> the nearest value of the MODE dtype (ties to even), still fp32."""
    if MODE == 1:
        u = x.to(tl.uint32, bitcast=True)
        u = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16) << 16
        return u.to(tl.float32, bitcast=True)
    elif MODE == 2:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x
