"""Fused RMSNorm (and residual add + RMSNorm) for CUDA: one pass per row instead of the reference's
chain of elementwise kernels, which at decode batch sizes costs more in launches than in bytes.
Rounding follows the reference: the residual sum and the normalized row are rounded to the input
dtype before the weight multiply, only the mean is accumulated in a different order."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.kernels.registry import register_kernel
from engine.kernels.triton_availability import triton_cuda_available
from engine.kernels.triton_rounding import round_as, rounding_mode


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, eps, stride_xt, stride_xh, stride_rt,
                     stride_ot, stride_rot, heads, N: tl.constexpr, BLOCK: tl.constexpr,
                     ADD: tl.constexpr, ROUND: tl.constexpr):
    row = tl.program_id(0)
    t = (row // heads).to(tl.int64)
    h = row % heads
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + t * stride_xt + h * stride_xh + offs, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    if ADD:
        r = tl.load(res_ptr + t * stride_rt + offs, mask=mask, other=0.0)
        xf = round_as(xf + r.to(tl.float32), ROUND)
        tl.store(res_out_ptr + t * stride_rot + offs, xf.to(res_out_ptr.dtype.element_ty), mask=mask)
    var = tl.sum(xf * xf, 0) / N
    normed = round_as(xf * tl.rsqrt(var + eps), ROUND)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    y = (w.to(tl.float32) * normed).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + (row.to(tl.int64) * stride_ot) + offs, y, mask=mask)


def _warps(n: int) -> int:
    return 1 if n <= 256 else (4 if n <= 2048 else 8)


@register_kernel("rms_norm", "cuda", available=triton_cuda_available, name="triton_rms_norm")
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [T, N] or [T, heads, N] (the last dim contiguous; per-head views of the QKV output are
    fine), weight: [N]. Returns a contiguous tensor of x's shape and the promoted dtype."""
    n = x.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    heads = x.shape[1] if x.dim() == 3 else 1
    stride_h = x.stride(1) if x.dim() == 3 else 0
    rows = x.numel() // n
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if rows:
        _rms_norm_kernel[(rows,)](x, x, weight, out, out, eps, x.stride(0), stride_h, 0, n, 0, heads,
                                  N=n, BLOCK=triton.next_power_of_2(n), ADD=False, ROUND=rounding_mode(x.dtype),
                                  num_warps=_warps(n))
    return out


@register_kernel("add_rms_norm", "cuda", available=triton_cuda_available, name="triton_add_rms_norm")
def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """x, residual: [T, N]. Returns (rms_norm(x + residual), x + residual), both new [T, N] tensors."""
    t, n = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    if residual.stride(-1) != 1:
        residual = residual.contiguous()
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if t:
        _rms_norm_kernel[(t,)](x, residual, weight, out, res_out, eps, x.stride(0), 0, residual.stride(0),
                               n, n, 1, N=n, BLOCK=triton.next_power_of_2(n), ADD=True,
                               ROUND=rounding_mode(x.dtype), num_warps=_warps(n))
    return out, res_out
