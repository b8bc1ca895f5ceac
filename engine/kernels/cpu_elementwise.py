"""The elementwise ops of a decoder layer on the CPU (RMSNorm with the residual add fused, SiLU-and-mul,
rotary) as one C++ call each (engine/kernels/csrc/elementwise.cpp), built on first use like the
attention kernel. Shapes or dtypes the kernel does not take (not fp32, rows not contiguous) go to the
portable reference, as does everything when the extension cannot be built."""

from __future__ import annotations

import torch

from engine.kernels import reference
from engine.kernels.cpp_extension import CppExtension, fp32_heads, fp32_rows
from engine.kernels.registry import register_kernel

_EXT = CppExtension("tessera_cpu_elementwise", "elementwise.cpp")


def available() -> bool:
    return _EXT.available()


@register_kernel("rms_norm", "cpu", available=available, name="cpu_rms_norm")
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [T, H], weight: [H] -> [T, H]."""
    if not fp32_rows(x) or weight.dtype != torch.float32:
        return reference.rms_norm(x, weight, eps)
    return _EXT.load().rms_norm(x, weight, eps)


@register_kernel("add_rms_norm", "cpu", available=available, name="cpu_add_rms_norm")
def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """x, residual: [T, H] -> (rms_norm(x + residual), x + residual)."""
    if not fp32_rows(x, residual) or weight.dtype != torch.float32 or x.shape != residual.shape:
        return reference.add_rms_norm(x, residual, weight, eps)
    return tuple(_EXT.load().add_rms_norm(x, residual, weight, eps))


@register_kernel("silu_and_mul", "cpu", available=available, name="cpu_silu_and_mul")
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2*I] laid out as [gate | up] -> silu(gate) * up: [T, I]."""
    if not fp32_rows(x) or x.shape[1] % 2:
        return reference.silu_and_mul(x)
    return _EXT.load().silu_and_mul(x)


@register_kernel("rotary", "cpu", available=available, name="cpu_rotary")
def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q: [T, H, D], k: [T, KVH, D], cos/sin: [T, D] -> rotated (q, k), NeoX rotate-half."""
    if not fp32_heads(q, k) or cos.dtype != torch.float32 or q.shape[2] % 2:
        return reference.rotary(q, k, cos, sin)
    return tuple(_EXT.load().rotary(q, k, cos, sin))
