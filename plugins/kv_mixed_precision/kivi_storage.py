"""Quantized paged KV storage, KIVI layout: keys are quantized per channel over the tokens of a block,
values per token along the head dimension. Two kinds of block stay in full precision:

- the residual window: each sequence's unfinished last block (fewer than block_size tokens), as in KIVI;
- the attention sink: each sequence's first block. Every later query puts much of its attention on the
  first tokens, so their quantization error reaches every position (measured on SmolLM2 with K4V4: mean KL
  0.0039 with the first block quantized, 0.0023 with it kept).

Both live in a staging pool of `num_blocks // STAGING_RATIO` full-precision blocks, charged to every block in
`page_bytes`. When more blocks want a slot than the pool holds, the least recently used one leaves it: an
unfinished block has its keys quantized over the tokens it has so far (and is reopened from its dequantized
contents should it be written again), a finished sink block is simply read quantized from then on.

A query always sees what decode would see at its position: full precision for its own block and the sink
block, quantized keys and values for every other block. Prefill and verification spans therefore give the
same outputs as decoding the same tokens one by one, and teacher-forced fidelity measures what serving does."""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F

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
# queries per attention call in a prefill span: the keys past a tile's end are never read, and the
# exact copy of its own blocks is SPAN_TILE rows wide
SPAN_TILE = 64


def staging_slots(num_blocks: int) -> int:
    return max(1, num_blocks // STAGING_RATIO)


def first_blocks(meta: AttentionMetadata) -> torch.Tensor:
    """Block ids holding position 0 of the sequences in this step: [n] int64. Computed once per step and
    shared by every layer through meta.extras."""
    cached = meta.extras.get("kivi_first_blocks")
    if cached is not None:
        return cached
    firsts = [span.block_table[:1] for span in meta.prefills]
    if meta.num_decode_tokens:
        firsts.append(meta.decode_block_tables[:, 0])
    out = torch.cat(firsts) if firsts else meta.slot_mapping.new_empty(0)
    meta.extras["kivi_first_blocks"] = out
    return out


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
        # a finished block's keys are already quantized: `sink` keeps it staged, `finished` releases it at
        # the next write (after this step's attention has read it in full precision)
        self.sink = torch.zeros(s, dtype=torch.bool, device=device)
        self.finished = torch.zeros(s, dtype=torch.bool, device=device)
        self._clock = 0
        self._attend = get_kernel("gathered_paged_attention", torch.device(device).type)
        # packed codes read in place; 16-bit values are dense pages, which that kernel does not take
        self._decode = (get_kernel("kivi_decode_attention", torch.device(device).type)
                        if spec.value_bits != 16 else None)

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
        for name in ("fill", "last_used", "sink", "finished"):
            t = getattr(self, name)
            setattr(self, name, torch.cat([t, torch.zeros_like(t)]))

    def _release(self, slots: torch.Tensor) -> None:
        self.slot_of_block[self.block_of_slot[slots]] = -1
        self.block_of_slot[slots] = -1
        self.sink[slots] = False
        self.finished[slots] = False

    def _flush(self, slot: int) -> None:
        """Frees a slot; an unfinished block first has its keys quantized over the tokens it holds."""
        if not bool(self.sink[slot] or self.finished[slot]):
            block = int(self.block_of_slot[slot])
            n = max(1, int(self.fill[slot]))
            rows = self.stage_k[slot].clone()
            rows[n:] = rows[0]  # padding with a held row leaves every channel's min and max unchanged
            self.keys.write_blocks(rows.unsqueeze(0), torch.tensor([block], device=rows.device))
        self._release(torch.tensor([slot], device=self.block_of_slot.device))

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
        past its start is reopened from its dequantized contents. A staged block written from offset 0
        again has been given to a new sequence: its old state goes."""
        uniq, inv = torch.unique(blocks, return_inverse=True)
        first = torch.full_like(uniq, self.block_size).scatter_reduce_(0, inv, offs, reduce="amin")
        staged = self.slot_of_block[uniq]
        self.last_used[staged[staged >= 0]] = self._clock
        restart = staged[(staged >= 0) & (first == 0)]
        self.fill[restart] = 0
        self.sink[restart] = False
        self.finished[restart] = False
        for b, f in zip(uniq[staged < 0].tolist(), first[staged < 0].tolist(), strict=True):
            slot = self._take_slot()
            if f > 0:
                ids = torch.tensor([b], device=blocks.device)
                self.stage_k[slot] = self.keys.gather(ids)
                self.stage_v[slot] = self.values.gather(ids)
            self.slot_of_block[b] = slot
            self.block_of_slot[slot] = b
            self.fill[slot] = f
            self.last_used[slot] = self._clock

    # ---- storage interface --------------------------------------------------------------------
    def write(self, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> None:
        """k, v: [T, KVH, D] for the slots in meta.slot_mapping."""
        slots = meta.slot_mapping
        if not len(slots):
            return
        self._clock += 1
        self._release(self.finished.nonzero().flatten())
        sinks = first_blocks(meta)
        sink_slots = self.slot_of_block[sinks]
        self.last_used[sink_slots[sink_slots >= 0]] = self._clock  # in use: not the first to leave
        self.values.write(v, slots)
        bs = self.block_size
        blocks, offs = slots // bs, slots % bs
        rest = self._write_whole_blocks(k, blocks, offs, sinks)
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
            is_sink = torch.isin(done, sinks)
            self.sink[done_slots[is_sink]] = True
            self.finished[done_slots[~is_sink]] = True

    def _write_whole_blocks(self, k: torch.Tensor, blocks: torch.Tensor, offs: torch.Tensor,
                            sinks: torch.Tensor):
        """Blocks this write fills from start to end (prefill), other than sink blocks, are quantized
        straight away, never staged. Returns the mask of the remaining tokens, or None when there were
        no such blocks."""
        bs = self.block_size
        uniq, inv, counts = torch.unique(blocks, return_inverse=True, return_counts=True)
        if not bool((counts == bs).any()):
            return None
        first = torch.full_like(uniq, bs).scatter_reduce_(0, inv, offs, reduce="amin")
        whole = (counts == bs) & (first == 0) & (self.slot_of_block[uniq] < 0) & ~torch.isin(uniq, sinks)
        if not bool(whole.any()):
            return None
        sel = whole[inv]
        rank = torch.cumsum(whole, 0) - 1
        buf = torch.empty(int(whole.sum()), bs, *k.shape[1:], dtype=self.stage_k.dtype, device=k.device)
        buf[rank[inv[sel]], offs[sel]] = k[sel].to(buf.dtype)
        self.keys.write_blocks(buf, uniq[whole])
        return ~sel

    def gather(self, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """block_ids: [n] -> (K, V), each [n * block_size, KVH, D]: dequantized, staged blocks exact."""
        ks, vs = self.gather_quantized(block_ids)
        n = len(block_ids)
        kvh, d = self.spec.num_kv_heads, self.spec.head_dim
        ks, vs = ks.view(n, self.block_size, kvh, d), vs.view(n, self.block_size, kvh, d).clone()
        sid = self.slot_of_block[block_ids]
        staged = sid >= 0
        if bool(staged.any()):
            ks[staged] = self.stage_k[sid[staged]]
            vs[staged] = self.stage_v[sid[staged]]
        return ks.view(-1, kvh, d), vs.view(-1, kvh, d)

    def gather_quantized(self, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """block_ids: [n] -> the quantized (K, V) only, each [n * block_size, KVH, D]."""
        return self.keys.gather(block_ids), self.values.gather(block_ids)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
               scale: float) -> torch.Tensor:
        """q, k, v: [T, H or KVH, D] (k and v are already written) -> [T, H, D]. Decode tokens read the
        staged blocks exact; a span's query reads its own block and the sink block exact, other blocks
        quantized, as decode would at that position."""
        out = torch.empty_like(q)
        nd = meta.num_decode_tokens
        if nd and self._decode is not None:
            keys, values = self.keys, self.values
            out[:nd] = self._decode(q[:nd], keys.codes, keys.scale, keys.minimum, values.codes, values.scale,
                                    values.minimum, self.stage_k, self.stage_v, self.slot_of_block,
                                    meta.decode_block_tables, meta.decode_context_lens, self.spec.key_bits,
                                    self.spec.value_bits, scale)
        elif nd:
            decode = dataclasses.replace(meta, prefills=[], slot_mapping=meta.slot_mapping[:nd])
            out[:nd] = self._attend(q[:nd], self.gather, decode, scale)
        for span in meta.prefills:
            s, n = span.query_start, span.query_len
            out[s:s + n] = self._attend_span(q[s:s + n], k[s:s + n], v[s:s + n], span, scale)
        return out

    def _attend_span(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span, scale: float) -> torch.Tensor:
        """q: [n, H, D], k, v: [n, KVH, D] (this step's exact rows) -> [n, H, D].

        Queries go in tiles of SPAN_TILE. A tile attends to one key sequence: the quantized context up to
        its last position (the sink block exact), then the exact rows of the blocks its queries sit in; the
        mask takes the quantized copy before a query's own block and the exact one within it. A tile reads
        only the keys up to its own end, so the span costs about what causal attention costs rather than
        a full square over two copies of the context."""
        n, ctx, bs = span.query_len, span.context_len, self.block_size
        start = ctx - n
        table = span.block_table
        kq, vq = self.gather_quantized(table[:-(-ctx // bs)])
        ks, vs = self.gather(table[:1])
        kq[:bs], vq[:bs] = ks, vs  # the sink: exact while it is staged, as decode reads it
        lo = start // bs * bs  # first row of the first block a query of this span sits in
        ke, ve = self.gather(table[lo // bs:-(-ctx // bs)])
        ke[start - lo:ctx - lo], ve[start - lo:ctx - lo] = k.to(ke.dtype), v.to(ve.dtype)
        out = torch.empty_like(q)
        for t0 in range(0, n, SPAN_TILE):
            t1 = min(n, t0 + SPAN_TILE)
            first, end = start + t0, start + t1  # positions of the tile's queries: [first, end)
            own = first // bs * bs
            keys = torch.cat([kq[:end], ke[own - lo:end - lo]]).transpose(0, 1)  # [KVH, end + end - own, D]
            vals = torch.cat([vq[:end], ve[own - lo:end - lo]]).transpose(0, 1)
            qpos = torch.arange(first, end, device=q.device).unsqueeze(1)
            qblock = qpos // bs * bs
            kpos = torch.arange(end, device=q.device).unsqueeze(0)
            epos = torch.arange(own, end, device=q.device).unsqueeze(0)
            mask = torch.cat([kpos < qblock, (epos >= qblock) & (epos <= qpos)], dim=1)
            o = F.scaled_dot_product_attention(q[t0:t1].transpose(0, 1), keys, vals, attn_mask=mask, scale=scale,
                                               enable_gqa=True)
            out[t0:t1] = o.transpose(0, 1)
        return out
