"""Quantized paged KV storage, per-token layout: keys and values are each quantized per token along the
head dimension (groups of `spec.group_size` channels) with their own bit width; 16 bits keeps that side
unquantized. Attention dequantizes the blocks it reads."""

from __future__ import annotations

import torch

from engine.attention_metadata import AttentionMetadata
from engine.kernels.registry import get_kernel
from engine.kv_spec import KVSpec
from engine.kv_storage import register_kv_storage
from plugins.kv_mixed_precision.pages import make_token_pages, token_pages_bytes


@register_kv_storage("kv_per_token")
class PerTokenKVStorage:
    def __init__(self, spec: KVSpec, num_blocks: int, block_size: int, device: torch.device) -> None:
        self.spec = spec
        self.block_size = block_size
        args = (num_blocks, block_size, spec.num_kv_heads, spec.head_dim, spec.group_size, spec.dtype, device)
        self.keys = make_token_pages(spec.key_bits, *args)
        self.values = make_token_pages(spec.value_bits, *args)
        self._attend = get_kernel("gathered_paged_attention", torch.device(device).type)

    @staticmethod
    def page_bytes(spec: KVSpec, block_size: int) -> int:
        args = (block_size, spec.num_kv_heads, spec.head_dim, spec.group_size, spec.dtype)
        return token_pages_bytes(spec.key_bits, *args) + token_pages_bytes(spec.value_bits, *args)

    def write(self, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> None:
        """k, v: [T, KVH, D] for the slots in meta.slot_mapping."""
        self.keys.write(k, meta.slot_mapping)
        self.values.write(v, meta.slot_mapping)

    def gather(self, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """block_ids: [n] -> dequantized (K, V), each [n * block_size, KVH, D]."""
        return self.keys.gather(block_ids), self.values.gather(block_ids)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
               scale: float) -> torch.Tensor:
        """q: [T, H, D] -> [T, H, D]; k and v were written already and are read back quantized."""
        return self._attend(q, self.gather, meta, scale)
