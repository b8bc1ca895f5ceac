"""Whether the Triton kernels can run here: Triton imports and a CUDA device is visible. Shared by every
engine/kernels/triton_*.py module so the registry never hands out a kernel the machine cannot launch."""

from __future__ import annotations

import functools

import torch


@functools.cache
def triton_cuda_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
