"""Ascend NPU through torch_npu. Selected only when torch_npu imports and reports a device; without
hardware the portable reference kernels cover every op."""

from __future__ import annotations

import torch

from engine.config import DeviceConfig
from engine.platforms.base import Platform


def is_available() -> bool:
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def create(config: DeviceConfig) -> Platform:
    device = torch.device(config.device if ":" in config.device else "npu")
    return Platform("npu", device, torch.bfloat16)
