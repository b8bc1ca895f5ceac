from __future__ import annotations

import torch

from engine.config import DeviceConfig
from engine.platforms.base import Platform


def is_available() -> bool:
    return torch.cuda.is_available()


def create(config: DeviceConfig) -> Platform:
    device = torch.device(config.device if ":" in config.device else f"cuda:{torch.cuda.current_device()}")
    torch.cuda.set_device(device)
    # Exactness checks compare fp32 CUDA with fp32 CPU; TF32 would silently change the numerics.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return Platform("cuda", device, torch.bfloat16)
