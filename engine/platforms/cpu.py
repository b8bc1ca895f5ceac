from __future__ import annotations

import torch

from engine.config import DeviceConfig
from engine.platforms.base import Platform


def is_available() -> bool:
    return True


def create(config: DeviceConfig) -> Platform:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    # fp32 on CPU: exact against the reference, and bf16 matmul is not faster on most CPUs.
    return Platform("cpu", torch.device("cpu"), torch.float32)
