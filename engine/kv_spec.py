"""Storage spec of one layer's KV cache. The default is the model dtype; plugins (kv_spec hook) may
return another spec, whose `storage` names an implementation in the KV storage registry."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVSpec:
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    storage: str = "dense"
    key_bits: int = 16
    value_bits: int = 16
    group_size: int = 0
    quant_mode: str = "none"  # none | per_token | kivi
    residual_window: int = 0  # most recent tokens kept unquantized (KIVI)

    def __post_init__(self) -> None:
        if self.num_kv_heads < 1 or self.head_dim < 1:
            raise ValueError("KVSpec needs num_kv_heads >= 1 and head_dim >= 1")
        for name in ("key_bits", "value_bits"):
            if getattr(self, name) not in (2, 4, 8, 16, 32):
                raise ValueError(f"KVSpec.{name} must be 2, 4, 8, 16 or 32")
        if self.quant_mode not in ("none", "per_token", "kivi"):
            raise ValueError(f"KVSpec.quant_mode must be none, per_token or kivi, got {self.quant_mode!r}")

    @classmethod
    def dense(cls, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> KVSpec:
        bits = torch.finfo(dtype).bits
        return cls(num_kv_heads, head_dim, dtype, key_bits=bits, value_bits=bits)

    def page_bytes(self, block_size: int) -> int:
        """Real bytes of one block (keys and values) of this layer, as the storage lays it out."""
        from engine.kv_storage import kv_storage_class

        return kv_storage_class(self.storage).page_bytes(self, block_size)
