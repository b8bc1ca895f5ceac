"""Row-wise argmax on the CPU (engine/kernels/csrc/argmax.cpp), built on first use like the other C++
kernels: the greedy sampler's pass over the logits. Anything the kernel does not take (not fp32, rows not
contiguous) goes to the reference, torch.argmax, whose answer it matches (first maximum, NaN first)."""

from __future__ import annotations

import torch

from engine.kernels import reference
from engine.kernels.cpp_extension import CppExtension, fp32_rows
from engine.kernels.registry import register_kernel

_EXT = CppExtension("tessera_cpu_argmax", "argmax.cpp")


def available() -> bool:
    return _EXT.available()


@register_kernel("argmax", "cpu", available=available, name="cpu_argmax_rows")
def argmax(x: torch.Tensor) -> torch.Tensor:
    """x: [R, V] -> [R] int64, the first index of each row's maximum."""
    if not fp32_rows(x) or x.shape[1] == 0:
        return reference.argmax(x)
    return _EXT.load().argmax_rows(x)
