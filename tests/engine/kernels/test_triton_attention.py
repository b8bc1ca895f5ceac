"""Triton paged attention and cache write against the portable reference, on fresh random inputs, for
decode rows (short and multi-partition contexts), fresh prefill spans and chunked prefill over a
cached prefix. Skips without CUDA (CI); run on a GPU machine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.attention_metadata import AttentionMetadata, PrefillSpan
from engine.kernels import reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _triton():
    return pytest.importorskip("engine.kernels.triton_attention")


def _case(seed, dtype, heads, kv_heads, dim, bs, ctx_lens, spans, num_blocks=None):
    """Random caches (every slot written) and metadata with decode rows first, then spans."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    total_blocks = sum(-(-c // bs) for c in ctx_lens) + sum(-(-c // bs) for _, c in spans)
    num_blocks = num_blocks or total_blocks + 8
    kc = torch.randn(num_blocks, bs, kv_heads, dim, generator=g, device="cuda").to(dtype)
    vc = torch.randn(num_blocks, bs, kv_heads, dim, generator=g, device="cuda").to(dtype)
    perm = torch.randperm(num_blocks, generator=g, device="cuda").tolist()
    seqs = [(1, c) for c in ctx_lens] + list(spans)
    tables, slots, prefills, start = [], [], [], 0
    for qlen, ctx in seqs:
        table = torch.tensor([perm.pop() for _ in range(-(-ctx // bs))], device="cuda")
        tables.append(table)
        slots.extend(int(table[p // bs]) * bs + p % bs for p in range(ctx - qlen, ctx))
        if qlen > 1:
            prefills.append(PrefillSpan(start, qlen, ctx, table))
        start += qlen
    q = torch.randn(start, heads, dim, generator=g, device="cuda").to(dtype)
    nd = len(ctx_lens)
    meta = AttentionMetadata(bs, torch.tensor(slots, device="cuda"), prefills=prefills)
    if nd:
        width = max(len(t) for t in tables[:nd])
        meta.num_decode_tokens = nd
        meta.decode_block_tables = torch.stack([F.pad(t, (0, width - len(t))) for t in tables[:nd]])
        meta.decode_context_lens = torch.tensor(ctx_lens, device="cuda")
        meta.decode_max_context = max(ctx_lens)
    k = torch.randn(start, kv_heads, dim, generator=g, device="cuda").to(dtype)
    v = torch.randn(start, kv_heads, dim, generator=g, device="cuda").to(dtype)
    reference.write_kv(k, v, kc, vc, meta.slot_mapping)
    return q, k, v, kc, vc, meta


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert not torch.isnan(got).any(), "NaN in kernel output"
    return float((got.double() - want.double()).norm() / want.double().norm())


SHAPES = [(32, 8, 128, 16), (9, 3, 64, 16), (4, 2, 16, 8)]


@pytest.mark.parametrize("heads,kv_heads,dim,bs", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_paged_attention_matches_reference(heads, kv_heads, dim, bs, dtype, tol):
    ta = _triton()
    for seed in range(2):
        # decode rows (one spans several partitions), a fresh prompt, and chunks continuing a cached prefix
        q, k, v, kc, vc, meta = _case(seed, dtype, heads, kv_heads, dim, bs, ctx_lens=(1, 17, 300, 1300),
                                      spans=((37, 37), (200, 200), (64, 515), (3, 130)))
        want = reference.paged_attention(q, k, v, kc, vc, meta, dim ** -0.5)
        got = ta.paged_attention(q, k, v, kc, vc, meta, dim ** -0.5)
        assert _rel_err(got, want) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_partitioning_does_not_change_bits(dtype):
    """A larger grid (as a CUDA graph sized for the longest context launches) gives identical rows."""
    ta = _triton()
    q, _, _, kc, vc, meta = _case(3, dtype, 32, 8, 128, 16, ctx_lens=(5, 200, 512, 513, 1500), spans=())
    out_a = torch.full_like(q, float("nan"))
    out_b = torch.full_like(q, float("nan"))
    ta.decode_attention(q, kc, vc, meta.decode_block_tables, meta.decode_context_lens, 1500, 0.1, out_a)
    ta.decode_attention(q, kc, vc, meta.decode_block_tables, meta.decode_context_lens, 8192, 0.1, out_b)
    assert torch.equal(out_a, out_b)
    short = meta.decode_context_lens <= 512
    out_c = torch.full_like(q[short], float("nan"))
    ta.decode_attention(q[short], kc, vc, meta.decode_block_tables[short], meta.decode_context_lens[short],
                        512, 0.1, out_c)  # single-partition path
    assert torch.equal(out_c, out_b[short])


def test_decode_zero_context_rows_are_zero():
    ta = _triton()
    q, _, _, kc, vc, meta = _case(4, torch.bfloat16, 32, 8, 128, 16, ctx_lens=(40, 90), spans=())
    lens = meta.decode_context_lens.clone()
    lens[1] = 0
    for max_ctx in (90, 4096):
        out = torch.full_like(q, float("nan"))
        ta.decode_attention(q, kc, vc, meta.decode_block_tables, lens, max_ctx, 0.1, out)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        assert not torch.isnan(out[0]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_matches_reference_and_skips_negative_slots(dtype):
    ta = _triton()
    g = torch.Generator(device="cuda").manual_seed(5)
    nb, bs, kvh, d, t = 12, 16, 8, 128, 20
    qkv = torch.randn(t, (32 + 2 * kvh) * d, generator=g, device="cuda").to(dtype)
    k = qkv[:, 32 * d:(32 + kvh) * d].view(t, kvh, d)  # non-contiguous views, as the model passes them
    v = qkv[:, (32 + kvh) * d:].view(t, kvh, d)
    slots = torch.randperm(nb * bs, generator=g, device="cuda")[:t]
    slots[3] = -1
    caches = [torch.randn(nb, bs, kvh, d, generator=g, device="cuda").to(dtype) for _ in range(2)]
    want = [c.clone() for c in caches]
    keep = slots >= 0
    reference.write_kv(k[keep], v[keep], want[0], want[1], slots[keep])
    ta.write_kv(k, v, caches[0], caches[1], slots)
    assert torch.equal(caches[0], want[0]) and torch.equal(caches[1], want[1])
