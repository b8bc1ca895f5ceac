from __future__ import annotations

import ctypes
import ctypes.util

import torch

from engine.config import DeviceConfig
from engine.platforms.base import Platform


def is_available() -> bool:
    return True


def _keep_freed_memory() -> None:
    """Stops glibc from returning every large activation buffer to the OS. By default each buffer
    over the mmap threshold is mapped and unmapped per use, so every layer of every step pays page
    faults; vLLM's CPU backend avoids the same cost by preloading tcmalloc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 256 << 20)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def create(config: DeviceConfig) -> Platform:
    _keep_freed_memory()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    # fp32 on CPU: exact against the reference, and bf16 matmul is not faster on most CPUs.
    return Platform("cpu", torch.device("cpu"), torch.float32)
