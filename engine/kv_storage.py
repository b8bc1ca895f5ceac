"""Per-layer paged KV storage, selected by name from a registry so a plugin can bring its own layout
(quantized, packed) while the engine keeps one code path: `write` then `attend`."""

from __future__ import annotations

import torch

from engine.attention_metadata import AttentionMetadata
from engine.kernels.registry import get_kernel
from engine.kv_spec import KVSpec
from engine.registry import Registry

STORAGES: Registry[type] = Registry("KV storage")
register_kv_storage = STORAGES.register


def kv_storage_class(name: str) -> type:
    return STORAGES.get(name)


def create_kv_storage(spec: KVSpec, num_blocks: int, block_size: int, device: torch.device):
    return kv_storage_class(spec.storage)(spec, num_blocks, block_size, device)


@register_kv_storage("dense")
class DenseKVStorage:
    """Keys and values in the spec dtype: [num_blocks, block_size, num_kv_heads, head_dim] each."""

    def __init__(self, spec: KVSpec, num_blocks: int, block_size: int, device: torch.device) -> None:
        shape = (num_blocks, block_size, spec.num_kv_heads, spec.head_dim)
        self.spec = spec
        self.block_size = block_size
        self.k_cache = torch.zeros(shape, dtype=spec.dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=spec.dtype, device=device)
        dev = torch.device(device).type
        self._write = get_kernel("write_kv", dev)
        self._attend = get_kernel("paged_attention", dev)

    @staticmethod
    def page_bytes(spec: KVSpec, block_size: int) -> int:
        elem = torch.empty((), dtype=spec.dtype).element_size()
        return 2 * block_size * spec.num_kv_heads * spec.head_dim * elem

    def write(self, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> None:
        """k, v: [T, KVH, D] for the slots in meta.slot_mapping."""
        self._write(k, v, self.k_cache, self.v_cache, meta.slot_mapping)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
               scale: float) -> torch.Tensor:
        """q: [T, H, D] -> [T, H, D]."""
        return self._attend(q, k, v, self.k_cache, self.v_cache, meta, scale)
