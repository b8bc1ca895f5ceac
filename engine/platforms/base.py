from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Platform:
    name: str  # cpu | cuda | npu
    device: torch.device
    default_dtype: torch.dtype

    @property
    def device_type(self) -> str:
        return self.device.type

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def free_memory_bytes(self) -> int | None:
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return free
        return None
