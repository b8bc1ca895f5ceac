from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | npu
    num_threads: int | None = None  # CPU intra-op threads; None: all cores
    # CUDA: decode steps of up to this many sequences replay CUDA graphs; 0 runs every step eagerly
    cuda_graph_max_batch: int = 256

    def __post_init__(self) -> None:
        base = self.device.split(":")[0]
        if base not in ("auto", "cpu", "cuda", "npu"):
            raise ValueError(f"device must be auto, cpu, cuda[:N] or npu, got {self.device!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        if self.cuda_graph_max_batch < 0:
            raise ValueError(f"cuda_graph_max_batch must be >= 0, got {self.cuda_graph_max_batch}")
