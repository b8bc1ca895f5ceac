"""Engine configuration, split by domain. Every config validates on construction and is frozen."""

from engine.config.cache import CacheConfig
from engine.config.device import DeviceConfig
from engine.config.engine import EngineConfig
from engine.config.model import ModelConfig
from engine.config.scheduler import SchedulerConfig

__all__ = ["CacheConfig", "DeviceConfig", "EngineConfig", "ModelConfig", "SchedulerConfig"]
