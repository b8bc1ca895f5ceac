"""One side (keys or values) of one layer's paged KV cache. `write` stores this step's vectors at their
slots; `gather` returns whole blocks dequantized. Each class states its exact bytes per block, which is
what the engine's memory accounting reads."""

from __future__ import annotations

import torch

from engine.kernels.kv_quant import SCALE_BYTES, SCALE_DTYPE, packed_size
from engine.kernels.registry import get_kernel


class DensePages:
    """Unquantized: [num_blocks, block_size, KVH, D] in the model dtype (the 16-bit choice)."""

    def __init__(self, num_blocks: int, block_size: int, kvh: int, d: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.data = torch.zeros(num_blocks, block_size, kvh, d, dtype=dtype, device=device)
        self.block_size, self.kvh, self.d = block_size, kvh, d

    @staticmethod
    def block_bytes(block_size: int, kvh: int, d: int, dtype: torch.dtype) -> int:
        return block_size * kvh * d * torch.empty((), dtype=dtype).element_size()

    def write(self, x: torch.Tensor, slots: torch.Tensor) -> None:
        """x: [T, KVH, D], slots: [T] int64."""
        self.data.view(-1, self.kvh, self.d).index_copy_(0, slots, x.to(self.data.dtype))

    def gather(self, block_ids: torch.Tensor) -> torch.Tensor:
        """block_ids: [n] -> [n * block_size, KVH, D]."""
        return self.data.index_select(0, block_ids).view(-1, self.kvh, self.d)


class TokenQuantPages:
    """Per token: each head vector is quantized in groups of `group` channels. Codes
    [num_blocks, block_size, KVH, D * bits / 8] uint8, scale and minimum [num_blocks, block_size, KVH, D / group]."""

    def __init__(self, num_blocks: int, block_size: int, kvh: int, d: int, bits: int, group: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.block_bytes(block_size, kvh, d, bits, group)  # validates the shape
        self.block_size, self.kvh, self.d, self.bits, self.group, self.dtype = block_size, kvh, d, bits, group, dtype
        self.codes = torch.zeros(num_blocks, block_size, kvh, packed_size(d, bits), dtype=torch.uint8,
                                 device=device)
        self.scale = torch.zeros(num_blocks, block_size, kvh, d // group, dtype=SCALE_DTYPE, device=device)
        self.minimum = torch.zeros_like(self.scale)
        dev = torch.device(device).type
        self._quantize = get_kernel("kv_quantize", dev)
        self._dequantize = get_kernel("kv_dequantize", dev)

    @staticmethod
    def block_bytes(block_size: int, kvh: int, d: int, bits: int, group: int) -> int:
        if group < 1 or d % group:
            raise ValueError(f"group size {group} must divide the head dimension {d}")
        return block_size * kvh * (packed_size(d, bits) + 2 * SCALE_BYTES * (d // group))

    def write(self, x: torch.Tensor, slots: torch.Tensor) -> None:
        """x: [T, KVH, D], slots: [T] int64."""
        codes, scale, minimum = self._quantize(x, self.bits, self.group)
        self.codes.view(-1, *self.codes.shape[2:]).index_copy_(0, slots, codes)
        self.scale.view(-1, *self.scale.shape[2:]).index_copy_(0, slots, scale)
        self.minimum.view(-1, *self.minimum.shape[2:]).index_copy_(0, slots, minimum)

    def gather(self, block_ids: torch.Tensor) -> torch.Tensor:
        """block_ids: [n] -> [n * block_size, KVH, D] dequantized."""
        x = self._dequantize(self.codes.index_select(0, block_ids), self.scale.index_select(0, block_ids),
                             self.minimum.index_select(0, block_ids), self.bits, self.dtype)
        return x.view(-1, self.kvh, self.d)


class ChannelQuantPages:
    """KIVI keys: each channel of a head is quantized over the tokens of one block (the token group is the
    block). Codes [num_blocks, KVH, D, block_size * bits / 8] uint8, scale and minimum [num_blocks, KVH, D, 1].
    A block is written whole, once all its tokens are known."""

    def __init__(self, num_blocks: int, block_size: int, kvh: int, d: int, bits: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.block_bytes(block_size, kvh, d, bits)
        self.block_size, self.kvh, self.d, self.bits, self.dtype = block_size, kvh, d, bits, dtype
        self.codes = torch.zeros(num_blocks, kvh, d, packed_size(block_size, bits), dtype=torch.uint8,
                                 device=device)
        self.scale = torch.zeros(num_blocks, kvh, d, 1, dtype=SCALE_DTYPE, device=device)
        self.minimum = torch.zeros_like(self.scale)
        dev = torch.device(device).type
        self._quantize = get_kernel("kv_quantize", dev)
        self._dequantize = get_kernel("kv_dequantize", dev)

    @staticmethod
    def block_bytes(block_size: int, kvh: int, d: int, bits: int) -> int:
        return kvh * d * (packed_size(block_size, bits) + 2 * SCALE_BYTES)

    def write_blocks(self, blocks: torch.Tensor, block_ids: torch.Tensor) -> None:
        """blocks: [n, block_size, KVH, D] whole blocks, block_ids: [n]."""
        codes, scale, minimum = self._quantize(blocks.permute(0, 2, 3, 1), self.bits, self.block_size)
        self.codes.index_copy_(0, block_ids, codes)
        self.scale.index_copy_(0, block_ids, scale)
        self.minimum.index_copy_(0, block_ids, minimum)

    def gather(self, block_ids: torch.Tensor) -> torch.Tensor:
        """block_ids: [n] -> [n * block_size, KVH, D] dequantized."""
        x = self._dequantize(self.codes.index_select(0, block_ids), self.scale.index_select(0, block_ids),
                             self.minimum.index_select(0, block_ids), self.bits, self.dtype)
        return x.permute(0, 3, 1, 2).reshape(-1, self.kvh, self.d)


def make_token_pages(bits: int, num_blocks: int, block_size: int, kvh: int, d: int, group: int,
                     dtype: torch.dtype, device: torch.device):
    """Dense pages for 16 bits, per-token quantized pages otherwise."""
    if bits == 16:
        return DensePages(num_blocks, block_size, kvh, d, dtype, device)
    return TokenQuantPages(num_blocks, block_size, kvh, d, bits, group, dtype, device)


def token_pages_bytes(bits: int, block_size: int, kvh: int, d: int, group: int, dtype: torch.dtype) -> int:
    if bits == 16:
        return DensePages.block_bytes(block_size, kvh, d, dtype)
    return TokenQuantPages.block_bytes(block_size, kvh, d, bits, group)
