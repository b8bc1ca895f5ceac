from __future__ import annotations

from dataclasses import dataclass, field

from engine.config.cache import CacheConfig
from engine.config.device import DeviceConfig
from engine.config.model import ModelConfig
from engine.config.scheduler import SchedulerConfig


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    # plugin name -> options dict, composed in registry order
    plugins: tuple[tuple[str, dict], ...] = ()
