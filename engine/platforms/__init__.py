"""Device detection. `resolve_platform(DeviceConfig)` returns the platform the engine runs on."""

from __future__ import annotations

from engine.config import DeviceConfig
from engine.platforms.base import Platform


def resolve_platform(config: DeviceConfig) -> Platform:
    from engine.platforms import cpu, cuda, npu

    base = config.device.split(":")[0]
    if base == "auto":
        for module in (cuda, npu):
            if module.is_available():
                return module.create(config)
        return cpu.create(config)
    module = {"cpu": cpu, "cuda": cuda, "npu": npu}[base]
    if not module.is_available():
        raise ValueError(f"device {config.device!r} requested but not available on this machine")
    return module.create(config)


__all__ = ["Platform", "resolve_platform"]
