from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineStats:
    """Snapshot of engine-level counters (gauges are current values, counters are totals)."""

    num_running: int = 0
    num_waiting: int = 0
    num_blocks_total: int = 0
    num_blocks_free: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # prompt tokens found there
    num_preemptions: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    num_steps: int = 0
    last_step_time: float | None = None  # time.monotonic() of the last successful step
    kv_bytes_per_token: float = 0.0  # real KV cache bytes per token over all layers (scales included)
    kv_bits_mean: float = 0.0  # nominal K/V bits averaged over layers, keys and values (16 = unquantized)

    @property
    def kv_cache_usage(self) -> float:
        if not self.num_blocks_total:
            return 0.0
        return 1.0 - self.num_blocks_free / self.num_blocks_total
