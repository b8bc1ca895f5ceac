"""Quantize/dequantize round trip within half a step of the stored scale, packing exactly inverse, and
every storage's declared bytes equal to the bytes it really allocates."""

from __future__ import annotations

import pytest
import torch

from engine.attention_metadata import AttentionMetadata, PrefillSpan
from engine.kernels import kv_quant
from engine.kernels.registry import KERNELS, get_kernel
from engine.kv_spec import KVSpec
from engine.kv_storage import create_kv_storage, kv_storage_class
from plugins.kv_mixed_precision import kivi_storage, per_token_storage  # noqa: F401


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group", [16, 64])
def test_round_trip_error_within_half_step(bits, group):
    g = torch.Generator().manual_seed(bits * 100 + group)
    x = torch.randn(7, 3, 64, generator=g) * torch.logspace(-2, 2, 64)  # groups of very different ranges
    x[0, 0] = 5.0  # a constant row: zero range must not divide by zero
    packed, scale, minimum = kv_quant.quantize(x, bits, group)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 3, 64 * bits // 8)
    assert scale.shape == minimum.shape == (7, 3, 64 // group)
    y = kv_quant.dequantize(packed, scale, minimum, bits, torch.float32)
    err = (x - y).abs().view(7, 3, 64 // group, group).amax(-1)
    # the analytic bound: half a step, step = (max - min) / (2^b - 1) rounded up to fp16
    span = x.view(7, 3, 64 // group, group)
    step = (span.amax(-1) - span.amin(-1)) / (2 ** bits - 1)
    assert torch.all(scale.float() >= step)
    assert torch.all(scale.float() <= step * 1.002 + 1e-7)
    assert torch.all(err <= kv_quant.error_bound(scale) * (1 + 1e-5) + 1e-6)
    assert float((x[0, 0] - y[0, 0]).abs().max()) <= 5.0 * 2 ** -11


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_inverse_and_dense(bits):
    codes = torch.randint(0, 2 ** bits, (5, 32), dtype=torch.uint8)
    packed = kv_quant.pack(codes, bits)
    assert packed.shape == (5, 32 * bits // 8)
    assert torch.equal(kv_quant.unpack(packed, bits), codes)
    if bits == 4:  # 16 bytes: byte i holds code i in its low nibble, code 16 + i in its high one
        assert int(packed[0, 3]) == int(codes[0, 3]) | (int(codes[0, 19]) << 4)
    if bits == 2:
        assert int(packed[1, 0]) == sum(int(codes[1, 8 * r]) << (2 * r) for r in range(4))


def test_ops_registered_with_reference():
    for op in ("kv_quantize", "kv_dequantize", "kv_pack", "kv_unpack", "gathered_paged_attention"):
        assert get_kernel(op, "cpu") is KERNELS.reference(op)


def _allocated_bytes(store) -> int:
    """Bytes of every cache tensor (int64 indices and bool flags are bookkeeping, excluded like the
    engine's block tables)."""
    objs = [store] + [getattr(store, side) for side in ("keys", "values")]
    return sum(t.numel() * t.element_size() for o in objs for t in vars(o).values()
               if isinstance(t, torch.Tensor) and t.dtype not in (torch.long, torch.bool))


@pytest.mark.parametrize("storage,kb,vb", [("kv_per_token", 8, 8), ("kv_per_token", 4, 2), ("kv_per_token", 16, 4),
                                           ("kv_per_token", 2, 2), ("kv_kivi", 4, 4), ("kv_kivi", 2, 16)])
def test_page_bytes_are_the_real_bytes(storage, kb, vb):
    spec = KVSpec(3, 64, torch.float32, storage=storage, key_bits=kb, value_bits=vb, group_size=32,
                  quant_mode="kivi" if storage == "kv_kivi" else "per_token")
    nb, bs = 64, 16
    store = create_kv_storage(spec, nb, bs, torch.device("cpu"))
    real = _allocated_bytes(store)
    declared = kv_storage_class(storage).page_bytes(spec, bs) * nb
    assert declared >= real  # never under-reported
    assert declared - real < 2 * bs * 3 * 64 * 4  # the staging pool rounding at most
    if storage == "kv_per_token" and kb < 16 and vb < 16:
        expected = bs * 3 * (64 * kb // 8 + 64 * vb // 8 + 2 * 2 * 2 * 2)  # codes + fp16 scale/min, 2 groups
        assert kv_storage_class(storage).page_bytes(spec, bs) == expected


def test_four_bit_cache_is_under_30_percent_of_fp32_and_bf16():
    dense32 = KVSpec.dense(3, 64, torch.float32).page_bytes(16)
    dense16 = KVSpec.dense(3, 64, torch.bfloat16).page_bytes(16)
    spec = KVSpec(3, 64, torch.float32, storage="kv_per_token", key_bits=4, value_bits=4, group_size=64)
    assert spec.page_bytes(16) / dense32 <= 0.30
    assert spec.page_bytes(16) / dense16 <= 0.30


@pytest.mark.parametrize("storage", ["kv_per_token", "kv_kivi"])
def test_storage_round_trip_through_slots(storage):
    spec = KVSpec(2, 32, torch.float32, storage=storage, key_bits=8, value_bits=4, group_size=16,
                  quant_mode="kivi" if storage == "kv_kivi" else "per_token")
    bs = 4
    store = create_kv_storage(spec, 8, bs, torch.device("cpu"))
    k, v = torch.randn(10, 2, 32), torch.randn(10, 2, 32)
    slots = torch.tensor([12, 13, 14, 15, 20, 21, 22, 23, 4, 5])  # blocks 3, 5 full; block 1 partial
    store.write(k, v, AttentionMetadata(bs, slots))
    ks, vs = store.gather(torch.tensor([3, 5, 1]))
    got_k, got_v = ks[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]], vs[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    k_bound = (k.amax() - k.amin()) / 255  # looser than per group: any group's step is smaller
    v_bound = (v.amax() - v.amin()) / 15
    assert float((got_k - k).abs().max()) <= k_bound
    assert float((got_v - v).abs().max()) <= v_bound
    if storage == "kv_kivi":  # the residual (unfinished block 1) is kept exact
        assert torch.equal(got_k[8:], k[8:]) and torch.equal(got_v[8:], v[8:])
        assert not torch.equal(got_k[:8], k[:8])


def test_kivi_flushes_and_reopens_when_staging_is_full():
    spec = KVSpec(1, 16, torch.float32, storage="kv_kivi", key_bits=8, value_bits=8, group_size=16,
                  quant_mode="kivi")
    bs = 4
    store = create_kv_storage(spec, 16, bs, torch.device("cpu"))  # 16 // 16 = 1 staging slot
    assert store.stage_k.shape[0] == 1
    a, b = torch.randn(3, 1, 16), torch.randn(2, 1, 16)
    store.write(a, a, AttentionMetadata(bs, torch.tensor([0, 1, 2])))  # block 0, unfinished
    store.write(b, b, AttentionMetadata(bs, torch.tensor([8, 9])))  # block 2 evicts block 0
    ks, _ = store.gather(torch.tensor([0]))
    assert float((ks[:3] - a).abs().max()) <= float(a.amax() - a.amin()) / 255
    c = torch.randn(1, 1, 16)
    store.write(c, c, AttentionMetadata(bs, torch.tensor([3])))  # block 0 reopened and completed
    ks, _ = store.gather(torch.tensor([0]))
    assert float((ks[3] - c[0]).abs().max()) <= float(torch.cat([a, c]).amax() - torch.cat([a, c]).amin()) / 127


def test_default_kivi_four_bit_cache_is_under_30_percent_of_fp32():
    dense32 = KVSpec.dense(3, 64, torch.float32).page_bytes(16)
    spec = KVSpec(3, 64, torch.float32, storage="kv_kivi", key_bits=4, value_bits=4, group_size=16,
                  quant_mode="kivi")
    assert spec.page_bytes(16) / dense32 <= 0.30  # staging pool for residual and sink blocks included


def _kivi(bits=4, num_blocks=64, bs=4, kvh=1, d=16):
    spec = KVSpec(kvh, d, torch.float32, storage="kv_kivi", key_bits=bits, value_bits=bits, group_size=16,
                  quant_mode="kivi")
    return create_kv_storage(spec, num_blocks, bs, torch.device("cpu"))


def _span_meta(bs, start, n, table):
    pos = torch.arange(start, start + n)
    return AttentionMetadata(bs, table[pos // bs] * bs + pos % bs, prefills=[PrefillSpan(0, n, start + n, table)])


@pytest.mark.parametrize("cuts", [(23,), (150,), (37, 150), (70, 71, 150)],
                         ids=["one-tile", "three-tiles", "two-chunks", "three-chunks"])
def test_kivi_span_reads_what_decode_read_at_each_position(cuts):
    """Prefill of a sequence, whole or in chunks that end mid-block, gives every position the output that
    decoding it token by token gave: own block and first block exact, every other block quantized. 150
    tokens take three query tiles of the span path."""
    g = torch.Generator().manual_seed(0)
    t, bs, h = cuts[-1], 4, 2
    q, k, v = (torch.randn(t, n, 16, generator=g) for n in (h, 1, 1))
    table = torch.arange(40)
    whole = _kivi()
    spans = []
    for start, end in zip((0,) + cuts[:-1], cuts, strict=True):
        meta = _span_meta(bs, start, end - start, table)
        whole.write(k[start:end], v[start:end], meta)
        spans.append(whole.attend(q[start:end], k[start:end], v[start:end], meta, 0.25))
    out_span = torch.cat(spans)
    step = _kivi()
    outs = []
    for i in range(t):
        m = AttentionMetadata(bs, torch.tensor([i]), num_decode_tokens=1, decode_block_tables=table.unsqueeze(0),
                              decode_context_lens=torch.tensor([i + 1]), decode_max_context=i + 1)
        step.write(k[i:i + 1], v[i:i + 1], m)
        outs.append(step.attend(q[i:i + 1], k[i:i + 1], v[i:i + 1], m, 0.25))
    out_decode = torch.cat(outs)
    assert torch.allclose(out_span, out_decode, atol=1e-5), float((out_span - out_decode).abs().max())
    exact = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                                             v.transpose(0, 1), is_causal=True, scale=0.25,
                                                             enable_gqa=True).transpose(0, 1)
    assert torch.allclose(out_span[:2 * bs], exact[:2 * bs], atol=1e-5)  # blocks 0, 1: all read exact
    assert not torch.allclose(out_span[2 * bs:], exact[2 * bs:], atol=1e-3)  # block 1 read quantized later


def test_kivi_first_block_stays_exact_until_the_pool_needs_its_slot():
    g = torch.Generator().manual_seed(1)
    bs = 4
    store = _kivi(bits=2, num_blocks=32, bs=bs)  # 32 // 16 = 2 staging slots
    k = torch.randn(12, 1, 16, generator=g)
    store.write(k, k, _span_meta(bs, 0, 12, torch.tensor([5, 6, 7])))
    ks, _ = store.gather(torch.tensor([5, 6]))
    assert torch.equal(ks[:bs], k[:bs])  # the sink block
    assert not torch.equal(ks[bs:], k[bs:2 * bs])  # an ordinary finished block: quantized
    other = torch.randn(6, 1, 16, generator=g)  # two more sequences' unfinished blocks take both slots
    store.write(other[:3], other[:3], _span_meta(bs, 0, 3, torch.tensor([9])))
    store.write(other[3:], other[3:], _span_meta(bs, 0, 3, torch.tensor([11])))
    ks, _ = store.gather(torch.tensor([5]))
    assert not torch.equal(ks[:bs], k[:bs])  # evicted: read from its quantized copy
    assert float((ks[:bs] - k[:bs]).abs().max()) <= float(k[:bs].amax() - k[:bs].amin()) / 3
