"""The CPU attention kernels' rows do not depend on how a sequence is chunked or batched: one prefill span,
two chunks, or one decode row per position give bit-identical outputs (and, head-major, the same cache)."""

from __future__ import annotations

import pytest
import torch

from engine.attention_metadata import AttentionMetadata, PrefillSpan
from engine.kernels import cpu_attention, reference  # noqa: F401 (cpu_attention registers its kernels on import)
from engine.kernels.registry import KERNELS
from tests.engine.kernels.cases import BS, KVH, D, H, head_major


def _positions_meta(slots: torch.Tensor, table: torch.Tensor, first: int, last: int,
                    decode: bool) -> AttentionMetadata:
    """Metadata for positions [first, last) of one sequence with block table `table`: one prefill span, or
    one decode row per position as if every position were its own sequence."""
    if decode:
        return AttentionMetadata(BS, slots[first:last], num_decode_tokens=last - first,
                                 decode_block_tables=table.repeat(last - first, 1),
                                 decode_context_lens=torch.arange(first + 1, last + 1), decode_max_context=last)
    return AttentionMetadata(BS, slots[first:last],
                             prefills=[PrefillSpan(0, last - first, last, table[:-(-last // BS)])])


def test_cpu_attention_rows_do_not_depend_on_chunking():
    """A sequence prefilled in one span, in two chunks, or token by token as decode rows gives
    bit-identical attention outputs: the property that makes batching invisible."""
    entry = next(e for e in KERNELS.implementations("paged_attention") if e.device_type == "cpu")
    if not entry.available():
        pytest.skip("CPU attention kernel cannot be built here")
    g = torch.Generator().manual_seed(2)
    ctx, nb = 45, 3
    kc, vc = torch.randn(8, BS, KVH, D, generator=g), torch.randn(8, BS, KVH, D, generator=g)
    table = torch.tensor([5, 1, 6])
    q = torch.randn(ctx, H, D, generator=g)
    k, v = torch.randn(ctx, KVH, D, generator=g), torch.randn(ctx, KVH, D, generator=g)
    slots = torch.tensor([int(table[p // BS]) * BS + p % BS for p in range(ctx)])
    reference.write_kv(k, v, kc, vc, slots)

    def run(first, last, decode):
        meta = _positions_meta(slots, table, first, last, decode)
        return entry.fn(q[first:last], k[first:last], v[first:last], kc, vc, meta, D ** -0.5)

    whole = run(0, ctx, False)
    assert torch.equal(torch.cat([run(0, 20, False), run(20, ctx, False)]), whole)
    assert torch.equal(run(0, ctx, True), whole)
    assert nb == table.shape[0]


def test_head_major_attention_rows_do_not_depend_on_chunking_or_batching():
    """Head-major cache: a sequence prefilled in one span, in two chunks, or token by token as decode
    rows (each writing its own K/V) gives bit-identical outputs and the same cache."""
    entry = next(e for e in KERNELS.implementations("paged_attention_head_major") if e.device_type == "cpu")
    write = next(e for e in KERNELS.implementations("write_kv_head_major") if e.device_type == "cpu")
    if not entry.available():
        pytest.skip("CPU head-major attention cannot be built here")
    g = torch.Generator().manual_seed(2)
    ctx = 45
    table = torch.tensor([5, 1, 6])
    q = torch.randn(ctx, H, D, generator=g)
    k, v = torch.randn(ctx, KVH, D, generator=g), torch.randn(ctx, KVH, D, generator=g)
    slots = torch.tensor([int(table[p // BS]) * BS + p % BS for p in range(ctx)])

    def run(first, last, decode, caches):
        meta = _positions_meta(slots, table, first, last, decode)
        if not decode:  # decode rows write their own K/V in the attention kernel
            write.fn(k[first:last], v[first:last], *caches, slots[first:last])
        return entry.fn(q[first:last], k[first:last], v[first:last], *caches, meta, D ** -0.5)

    def fresh():
        return head_major(torch.zeros(8, BS, KVH, D), torch.zeros(8, BS, KVH, D))

    whole_cache = fresh()
    whole = run(0, ctx, False, whole_cache)
    chunked_cache = fresh()
    assert torch.equal(torch.cat([run(0, 20, False, chunked_cache), run(20, ctx, False, chunked_cache)]), whole)
    decoded_cache = fresh()
    assert torch.equal(torch.cat([run(p, p + 1, True, decoded_cache) for p in range(ctx)]), whole)
    assert all(torch.equal(a, b) for a, b in zip(decoded_cache, whole_cache, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(chunked_cache, whole_cache, strict=True))
