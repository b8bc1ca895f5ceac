"""Quantized paged KV storage, KIVI layout: keys are quantized per channel over the tokens of a block,
values per token along the head dimension, and the tokens of each sequence's unfinished last block (the
residual window, fewer than block_size tokens) stay in full precision until the block is complete.

The residual lives in a staging pool of `num_blocks // STAGING_RATIO` full-precision blocks, charged to
every block in `page_bytes`. When more blocks are unfinished than the pool holds, the least recently
written one is flushed: its keys are quantized over the tokens it has so far; should it be written again,
it is reopened from its dequantized contents (lossy, but only then)."""

from __future__ import annotations

import logging

import torch

from engine.attention_metadata import AttentionMetadata
from engine.kernels.registry import get_kernel
from engine.kv_spec import KVSpec
from engine.kv_storage import register_kv_storage
from plugins.kv_mixed_precision.pages import (
    ChannelQuantPages,
    DensePages,
    make_token_pages,
    token_pages_bytes,
)

log = logging.getLogger(__name__)
STAGING_RATIO = 16


def staging_slots(num_blocks: int) -> int:
    return max(1, num_blocks // STAGING_RATIO)


@register_kv_storage("kv_kivi")
class KiviKVStorage:
    def __init__(self, spec: KVSpec, num_blocks: int, block_size: int, device: torch.device) -> None:
        if spec.key_bits == 16:
            raise ValueError("the KIVI layout quantizes keys; use the per-token storage for 16-bit keys")
        self.spec = spec
        self.block_size = block_size
        kvh, d = spec.num_kv_heads, spec.head_dim
        self.keys = ChannelQuantPages(num_blocks, block_size, kvh, d, spec.key_bits, spec.dtype, device)
        self.values = make_token_pages(spec.value_bits, num_blocks, block_size, kvh, d, spec.group_size,
                                       spec.dtype, device)
        s = staging_slots(num_blocks)
        self.stage_k = torch.zeros(s, block_size, kvh, d, dtype=spec.dtype, device=device)
        self.stage_v = torch.zeros_like(self.stage_k)
        self.slot_of_block = torch.full((num_blocks,), -1, dtype=torch.long, device=device)
        self.block_of_slot = torch.full((s,), -1, dtype=torch.long, device=device)
        self.fill = torch.zeros(s, dtype=torch.long, device=device)
        self.last_used = torch.zeros(s, dtype=torch.long, device=device)
        self._clock = 0
        self._attend = get_kernel("gathered_paged_attention", torch.device(device).type)

    @staticmethod
    def page_bytes(spec: KVSpec, block_size: int) -> int:
        kvh, d = spec.num_kv_heads, spec.head_dim
        staging = 2 * DensePages.block_bytes(block_size, kvh, d, spec.dtype)
        return (ChannelQuantPages.block_bytes(block_size, kvh, d, spec.key_bits)
                + token_pages_bytes(spec.value_bits, block_size, kvh, d, spec.group_size, spec.dtype)
                + -(-staging // STAGING_RATIO))

    # ---- staging pool -------------------------------------------------------------------------
    def _grow(self) -> None:
        """Every slot holds a block written this very step: add slots rather than corrupt one."""
        extra = self.stage_k.shape[0]
        log.warning("KIVI staging pool full within one step; growing it to %d blocks", 2 * extra)
        self.stage_k = torch.cat([self.stage_k, torch.zeros_like(self.stage_k)])
        self.stage_v = torch.cat([self.stage_v, torch.zeros_like(self.stage_v)])
        self.block_of_slot = torch.cat([self.block_of_slot, torch.full_like(self.block_of_slot, -1)])
        self.fill = torch.cat([self.fill, torch.zeros_like(self.fill)])
        self.last_used = torch.cat([self.last_used, torch.zeros_like(self.last_used)])

    def _flush(self, slot: int) -> None:
        """Quantizes a staged block's keys over the tokens it holds and frees its slot."""
        block = int(self.block_of_slot[slot])
        n = max(1, int(self.fill[slot]))
        rows = self.stage_k[slot].clone()
        rows[n:] = rows[0]  # padding with a held row leaves every channel's min and max unchanged
        self.keys.write_blocks(rows.unsqueeze(0), torch.tensor([block], device=rows.device))
        self.slot_of_block[block] = -1
        self.block_of_slot[slot] = -1

    def _take_slot(self) -> int:
        free = (self.block_of_slot < 0).nonzero()
        if len(free):
            return int(free[0])
        evictable = self.last_used < self._clock
        if not bool(evictable.any()):
            self._grow()
            return self._take_slot()
        slot = int(torch.where(evictable, self.last_used, self.last_used.new_tensor(self._clock)).argmin())
        self._flush(slot)
        return slot

    def _admit(self, blocks: torch.Tensor, offs: torch.Tensor) -> None:
        """Gives every block of this write a staging slot; a block that left staging and is written again
        past its start is reopened from its dequantized contents."""
        uniq = torch.unique(blocks)
        staged = self.slot_of_block[uniq]
        self.last_used[staged[staged >= 0]] = self._clock
        for b in uniq[staged < 0].tolist():
            first = int(offs[blocks == b].min())
            slot = self._take_slot()
            if first > 0:
                ids = torch.tensor([b], device=blocks.device)
                self.stage_k[slot] = self.keys.gather(ids)
                self.stage_v[slot] = self.values.gather(ids)
            self.slot_of_block[b] = slot
            self.block_of_slot[slot] = b
            self.fill[slot] = first
            self.last_used[slot] = self._clock

    # ---- storage interface --------------------------------------------------------------------
    def write(self, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> None:
        """k, v: [T, KVH, D] for the slots in meta.slot_mapping."""
        slots = meta.slot_mapping
        if not len(slots):
            return
        self._clock += 1
        self.values.write(v, slots)
        bs = self.block_size
        blocks, offs = slots // bs, slots % bs
        rest = self._write_whole_blocks(k, blocks, offs)
        if rest is not None:
            k, v, blocks, offs = k[rest], v[rest], blocks[rest], offs[rest]
            if not len(blocks):
                return
        self._admit(blocks, offs)
        sid = self.slot_of_block[blocks]
        self.stage_k[sid, offs] = k.to(self.stage_k.dtype)
        self.stage_v[sid, offs] = v.to(self.stage_v.dtype)
        self.fill.scatter_reduce_(0, sid, offs + 1, reduce="amax")
        done = torch.unique(blocks[offs == bs - 1])
        if len(done):
            done_slots = self.slot_of_block[done]
            self.keys.write_blocks(self.stage_k.index_select(0, done_slots), done)
            self.slot_of_block[done] = -1
            self.block_of_slot[done_slots] = -1

    def _write_whole_blocks(self, k: torch.Tensor, blocks: torch.Tensor, offs: torch.Tensor):
        """Blocks this write fills from start to end (prefill) are quantized straight away, never staged.
        Returns the mask of the remaining tokens, or None when there were no whole blocks."""
        bs = self.block_size
        uniq, inv, counts = torch.unique(blocks, return_inverse=True, return_counts=True)
        if not bool((counts == bs).any()):
            return None
        first = torch.full_like(uniq, bs).scatter_reduce_(0, inv, offs, reduce="amin")
        whole = (counts == bs) & (first == 0) & (self.slot_of_block[uniq] < 0)
        if not bool(whole.any()):
            return None
        sel = whole[inv]
        rank = torch.cumsum(whole, 0) - 1
        buf = torch.empty(int(whole.sum()), bs, *k.shape[1:], dtype=self.stage_k.dtype, device=k.device)
        buf[rank[inv[sel]], offs[sel]] = k[sel].to(buf.dtype)
        self.keys.write_blocks(buf, uniq[whole])
        return ~sel

    def gather(self, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """block_ids: [n] -> (K, V), each [n * block_size, KVH, D]: dequantized, residual rows exact."""
        n = len(block_ids)
        kvh, d = self.spec.num_kv_heads, self.spec.head_dim
        ks = self.keys.gather(block_ids).view(n, self.block_size, kvh, d)
        vs = self.values.gather(block_ids).view(n, self.block_size, kvh, d).clone()
        sid = self.slot_of_block[block_ids]
        staged = sid >= 0
        if bool(staged.any()):
            ks[staged] = self.stage_k[sid[staged]]
            vs[staged] = self.stage_v[sid[staged]]
        return ks.view(-1, kvh, d), vs.view(-1, kvh, d)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
               scale: float) -> torch.Tensor:
        """q: [T, H, D] -> [T, H, D]."""
        return self._attend(q, self.gather, meta, scale)
