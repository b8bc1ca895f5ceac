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


def head_major_layout(device_type: str, block_size: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether a dense cache on this device is laid out head-major: only where a device kernel reads that
    layout (the reference reads both, through views)."""
    if device_type != "cpu":
        return False
    from engine.kernels import cpu_attention

    return cpu_attention.head_major_supported(block_size, head_dim, dtype)


@register_kv_storage("dense")
class DenseKVStorage:
    """Keys and values in the spec dtype, token-major: [num_blocks, block_size, num_kv_heads, head_dim]
    each; or, where the device has kernels for it (x86 CPUs, fp32), head-major: per block and KV head the
    keys as [head_dim, block_size] and then the values as [block_size, head_dim], one stretch of memory
    the CPU attention reads once, front to back (k_cache and v_cache are views of one tensor). Same bytes
    either way."""

    def __init__(self, spec: KVSpec, num_blocks: int, block_size: int, device: torch.device) -> None:
        nb, kvh, d = num_blocks, spec.num_kv_heads, spec.head_dim
        self.spec = spec
        self.block_size = block_size
        dev = torch.device(device).type
        self.head_major = head_major_layout(dev, block_size, d, spec.dtype)
        if self.head_major:
            cache = torch.zeros((nb, kvh, 2, d * block_size), dtype=spec.dtype, device=device)
            self.k_cache = cache[:, :, 0].view(nb, kvh, d, block_size)
            self.v_cache = cache[:, :, 1].view(nb, kvh, block_size, d)
            self._write = get_kernel("write_kv_head_major", dev)
            self._attend = get_kernel("paged_attention_head_major", dev)
        else:
            self.k_cache = torch.zeros((nb, block_size, kvh, d), dtype=spec.dtype, device=device)
            self.v_cache = torch.zeros((nb, block_size, kvh, d), dtype=spec.dtype, device=device)
            self._write = get_kernel("write_kv", dev)
            self._attend = get_kernel("paged_attention", dev)

    @staticmethod
    def page_bytes(spec: KVSpec, block_size: int) -> int:
        elem = torch.empty((), dtype=spec.dtype).element_size()
        return 2 * block_size * spec.num_kv_heads * spec.head_dim * elem

    def write(self, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> None:
        """k, v: [T, KVH, D] for the slots in meta.slot_mapping. Head-major, the decode rows (the first
        meta.num_decode_tokens) are left to `attend`, which writes each as it reads that block."""
        if self.head_major:
            nd = meta.num_decode_tokens
            if nd < k.shape[0]:
                self._write(k[nd:], v[nd:], self.k_cache, self.v_cache, meta.slot_mapping[nd:])
            return
        self._write(k, v, self.k_cache, self.v_cache, meta.slot_mapping)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
               scale: float) -> torch.Tensor:
        """q: [T, H, D] -> [T, H, D]."""
        return self._attend(q, k, v, self.k_cache, self.v_cache, meta, scale)
