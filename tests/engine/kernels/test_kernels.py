"""Every registered device kernel against its portable reference, and the reference paged attention
against plain attention over contiguous keys/values."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from engine.attention_metadata import AttentionMetadata, PrefillSpan
from engine.kernels import reference
from engine.kernels.registry import KERNELS, REFERENCE, get_kernel
from tests.engine.kernels.cases import BS, KVH, D, H, greedy_head_cases, head_major


def _paged_case(seed=0, ctx_lens=(1, 17, 40, 130), spans=((5, 5), (20, 37)), num_blocks=96):
    """Random caches plus metadata mixing decode rows and multi-token spans (fresh and continued).
    Returns q, k, v, caches, meta, and the contiguous K/V per sequence for the naive check."""
    g = torch.Generator().manual_seed(seed)
    kc = torch.randn(num_blocks, BS, KVH, D, generator=g)
    vc = torch.randn(num_blocks, BS, KVH, D, generator=g)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    seqs = []
    for ctx in ctx_lens:
        nb = -(-ctx // BS)
        seqs.append((1, ctx, torch.tensor([perm.pop() for _ in range(nb)])))
    for qlen, ctx in spans:
        nb = -(-ctx // BS)
        seqs.append((qlen, ctx, torch.tensor([perm.pop() for _ in range(nb)])))
    t = sum(s[0] for s in seqs)
    q = torch.randn(t, H, D, generator=g)
    k = torch.randn(t, KVH, D, generator=g)
    v = torch.randn(t, KVH, D, generator=g)
    slots, prefills, start = [], [], 0
    for qlen, ctx, table in seqs:
        for p in range(ctx - qlen, ctx):
            slots.append(int(table[p // BS]) * BS + p % BS)
        if qlen > 1:
            prefills.append(PrefillSpan(start, qlen, ctx, table))
        start += qlen
    nd = len(ctx_lens)
    width = max(len(s[2]) for s in seqs[:nd])
    tables = torch.stack([F.pad(s[2], (0, width - len(s[2]))) for s in seqs[:nd]])
    meta = AttentionMetadata(BS, torch.tensor(slots), num_decode_tokens=nd, decode_block_tables=tables,
                             decode_context_lens=torch.tensor(ctx_lens), decode_max_context=max(ctx_lens),
                             prefills=prefills)
    reference.write_kv(k, v, kc, vc, meta.slot_mapping)
    return q, k, v, kc, vc, meta, seqs


def test_reference_paged_attention_matches_plain_attention():
    q, k, v, kc, vc, meta, seqs = _paged_case()
    out = reference.paged_attention(q, k, v, kc, vc, meta, D ** -0.5)
    start = 0
    for qlen, ctx, table in seqs:
        keys = kc[table].reshape(-1, KVH, D)[:ctx].repeat_interleave(H // KVH, dim=1).transpose(0, 1)
        vals = vc[table].reshape(-1, KVH, D)[:ctx].repeat_interleave(H // KVH, dim=1).transpose(0, 1)
        qs = q[start:start + qlen].transpose(0, 1)
        scores = qs @ keys.transpose(1, 2) * D ** -0.5
        qpos = torch.arange(ctx - qlen, ctx).unsqueeze(1)
        scores = scores.masked_fill(torch.arange(ctx).unsqueeze(0) > qpos, float("-inf"))
        expected = (scores.softmax(-1) @ vals).transpose(0, 1)
        torch.testing.assert_close(out[start:start + qlen], expected, atol=1e-5, rtol=1e-5)
        start += qlen


def _kivi_case(kbits, vbits, ctx_lens=(1, 17, 40, 130), num_blocks=40, seed=0, kvh=KVH, h=H, bs=BS, vgroup=16):
    """Arguments of kivi_decode_attention: quantized random K/V pages, some blocks staged in full
    precision, decode rows over random block tables."""
    from engine.kernels import kv_quant

    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(num_blocks, bs, kvh, D, generator=g) * torch.logspace(-1, 1, D)  # uneven channels
    vals = torch.randn(num_blocks, bs, kvh, D, generator=g)
    kc, ks, km = kv_quant.quantize(keys.permute(0, 2, 3, 1), kbits, bs)
    vc, vs, vm = kv_quant.quantize(vals, vbits, vgroup)
    stage_k, stage_v = torch.randn(4, bs, kvh, D, generator=g), torch.randn(4, bs, kvh, D, generator=g)
    perm = torch.randperm(num_blocks, generator=g)
    slot_of = torch.full((num_blocks,), -1, dtype=torch.long)
    slot_of[perm[:4]] = torch.arange(4)  # a few blocks, anywhere in the tables, read from staging
    width = -(-max(ctx_lens) // bs)
    tables = torch.stack([perm[torch.randperm(num_blocks, generator=g)[:width]] for _ in ctx_lens])
    q = torch.randn(len(ctx_lens), h, D, generator=g)
    return (q, kc, ks, km, vc, vs, vm, stage_k, stage_v, slot_of, tables, torch.tensor(ctx_lens), kbits, vbits,
            D ** -0.5)


# (KV heads, query heads, block size, value group): the vectorized CPU path takes 16-token blocks and
# 16-channel groups, query heads in chunks of up to 4 (1, 3, 4 + 3 below); other shapes the portable path
KIVI_SHAPES = [(KVH, H, BS, 16), (3, 3, 16, 16), (1, 4, 16, 16), (2, 14, 16, 16), (KVH, H, 8, 16),
               (KVH, H, 16, 32)]


def _elementwise_args(op: str, rows: int, seed: int = 0) -> tuple:
    """Inputs as the model passes them: rows are views into a wider projection output (strided), the
    activations large enough that SiLU's exp meets both signs and its clamp."""
    g = torch.Generator().manual_seed(seed)
    hidden, inter = 96, 80
    if op in ("rms_norm", "add_rms_norm"):
        x = torch.randn(rows, hidden + 8, generator=g)[:, :hidden] * 3
        w = torch.randn(hidden, generator=g)
        if op == "rms_norm":
            return x, w, 1e-5
        return x, torch.randn(rows, hidden, generator=g), w, 1e-6
    if op == "silu_and_mul":
        return (torch.randn(rows, 2 * inter + 4, generator=g)[:, :2 * inter] * 30,)
    qkv = torch.randn(rows, (H + 2 * KVH) * D, generator=g)
    q, k = qkv[:, :H * D].view(rows, H, D), qkv[:, H * D:(H + KVH) * D].view(rows, KVH, D)
    angles = torch.rand(rows, D // 2, generator=g) * 100
    emb = torch.cat((angles, angles), dim=-1)
    return q, k, emb.cos(), emb.sin()


ELEMENTWISE_CASES = {op: (lambda rows, op=op: _elementwise_args(op, rows))
                     for op in ("rms_norm", "add_rms_norm", "silu_and_mul", "rotary")}


def _argmax_rows(width: int) -> torch.Tensor:
    """[9, width] rows, strided, that test what the first maximum means: random, ties between vector
    lanes and with the tail, all -inf, all equal, a NaN in the middle or at the end, +inf."""
    g = torch.Generator().manual_seed(width)
    x = torch.randn(9, width + 5, generator=g)[:, :width]
    x[1, :] = torch.randint(0, 3, (width,), generator=g).float()  # many ties at the maximum
    x[2, :] = float("-inf")
    x[3, :] = 0.5
    x[4, width // 2] = float("nan")
    x[5, width - 1] = float("nan")
    x[6, width // 3] = float("inf")
    x[7, :] = x[0].max() + 1
    x[7, : width // 2] = 0.0  # the first maximum in the second half
    x[8, -1] = x[8].max() + 1  # the maximum in the tail alone
    return x


def _device_kernels():
    get_kernel("paged_attention", "cpu")  # loads the built-in kernel modules
    return [e for op in KERNELS.ops() for e in KERNELS.implementations(op) if e.device_type != REFERENCE]


@pytest.mark.parametrize("entry", _device_kernels(), ids=lambda e: f"{e.op}-{e.device_type}-{e.name}")
def test_device_kernel_matches_reference(entry):
    if entry.device_type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if entry.device_type == "npu":
        pytest.skip("needs an Ascend NPU")
    if not entry.available():
        pytest.skip(f"{entry.name} cannot be built on this machine")
    dev = "cuda" if entry.device_type == "cuda" else "cpu"
    ref = KERNELS.reference(entry.op)
    if entry.op == "paged_attention":
        q, k, v, kc, vc, meta, _ = _paged_case()
        def move(t):
            return (t.to(dev))
        meta_d = AttentionMetadata(BS, move(meta.slot_mapping), meta.num_decode_tokens,
                                   move(meta.decode_block_tables), move(meta.decode_context_lens),
                                   meta.decode_max_context,
                                   [PrefillSpan(p.query_start, p.query_len, p.context_len, move(p.block_table))
                                    for p in meta.prefills])
        got = entry.fn(move(q), move(k), move(v), move(kc), move(vc), meta_d, D ** -0.5).cpu()
        want = ref(q, k, v, kc, vc, meta, D ** -0.5)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    elif entry.op == "pack_linear":
        g = torch.Generator().manual_seed(0)
        w, b = torch.randn(300, 96, generator=g), torch.randn(300, generator=g)
        got_mod, want_mod = entry.fn(w.to(dev), b.to(dev)), ref(w, b)
        for rows in (1, 2, 17, 130):
            x = torch.randn(rows, 96, generator=g)
            torch.testing.assert_close(got_mod(x.to(dev)).cpu(), want_mod(x), atol=1e-4, rtol=1e-5)
    elif entry.op == "paged_attention_head_major":
        q, k, v, kc, vc, meta, _ = _paged_case()
        want_k, want_v = head_major(kc, vc)
        want = ref(q, k, v, want_k, want_v, meta, D ** -0.5)
        # the decode rows' own K/V are not in the cache yet: the op writes them
        nd = meta.num_decode_tokens
        blank_k, blank_v = kc.clone(), vc.clone()
        blank_k.view(-1, KVH, D)[meta.slot_mapping[:nd]] = float("nan")
        blank_v.view(-1, KVH, D)[meta.slot_mapping[:nd]] = float("nan")
        got_k, got_v = head_major(blank_k, blank_v)
        got = entry.fn(q, k, v, got_k, got_v, meta, D ** -0.5)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    elif entry.op == "write_kv_head_major":
        g = torch.Generator().manual_seed(0)
        kv = torch.randn(40, (H + 2 * KVH) * D, generator=g)  # strided rows, as the model passes them
        k, v = kv[:, H * D:(H + KVH) * D].view(40, KVH, D), kv[:, (H + KVH) * D:].view(40, KVH, D)
        # a prefill chunk over a block boundary, lone decode slots, a run starting mid-block
        slots = torch.tensor(list(range(3 * BS + 5, 3 * BS + 35)) + [2, 9 * BS, 7 * BS + 15] + list(range(5 * BS + 9, 5 * BS + 16)))
        base = [torch.randn(12, BS, KVH, D, generator=g) for _ in range(2)]
        got, want = head_major(*base), head_major(*base)
        entry.fn(k, v, *got, slots)
        ref(k, v, *want, slots)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        with pytest.raises(RuntimeError, match="slot out of range"):
            entry.fn(k[:2], v[:2], *got, torch.tensor([0, 12 * BS]))
    elif entry.op == "pack_gated_linear":
        g = torch.Generator().manual_seed(0)
        for inter, width in ((40, 96), (37, 50)):  # 37: a last panel of 5 outputs
            w = torch.randn(2 * inter, width, generator=g) * 0.2
            got_mod, want_mod = entry.fn(w.to(dev)), ref(w)
            for rows in (1, 5, 6, 7, 64):
                x = torch.randn(rows, width, generator=g) * 2
                torch.testing.assert_close(got_mod(x.to(dev)).cpu(), want_mod(x), atol=1e-4, rtol=1e-5)
    elif entry.op == "kivi_decode_attention":
        for (kb, vb), (kvh, h, bs, vgroup) in itertools.product(((8, 8), (4, 4), (4, 2), (2, 8)), KIVI_SHAPES):
            args = _kivi_case(kb, vb, kvh=kvh, h=h, bs=bs, vgroup=vgroup)
            got = entry.fn(*[a.to(dev) if isinstance(a, torch.Tensor) else a for a in args]).cpu()
            torch.testing.assert_close(got, ref(*args), atol=2e-5, rtol=1e-5,
                                       msg=lambda m, kb=kb, vb=vb, s=(kvh, h, bs, vgroup): f"K{kb}V{vb} {s}: {m}")
    elif entry.device_type == "cuda" and entry.name.startswith("triton"):
        pytest.skip("compared with its reference in tests/engine/kernels/test_triton_*.py")
    elif entry.op == "write_kv":
        g = torch.Generator().manual_seed(0)
        kv = torch.randn(5, (H + 2 * KVH) * D, generator=g)  # rows as the model passes them: strided views
        k, v = kv[:, H * D:(H + KVH) * D].view(5, KVH, D), kv[:, (H + KVH) * D:].view(5, KVH, D)
        slots = torch.tensor([3, 0, 17, 40, 9])
        caches = [torch.randn(4, BS, KVH, D, generator=g) for _ in range(2)]
        got, want = [c.clone() for c in caches], [c.clone() for c in caches]
        entry.fn(k, v, *got, slots)
        ref(k, v, *want, slots)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        with pytest.raises(RuntimeError, match="slot out of range"):
            entry.fn(k, v, *got, torch.tensor([0, 1, 2, 3, 4 * BS]))
    elif entry.op in ELEMENTWISE_CASES:
        for rows in (1, 17, 130):
            args = ELEMENTWISE_CASES[entry.op](rows)
            got, want = entry.fn(*args), ref(*args)
            for a, b in zip(*((x,) if isinstance(x, torch.Tensor) else x for x in (got, want)), strict=True):
                if entry.op == "rotary":  # products rounded before the add, as the reference: exact
                    assert torch.equal(a, b), f"{rows} rows: rotary differs from the reference"
                else:
                    torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)
    elif entry.op == "pack_greedy_head":
        pack = get_kernel("pack_linear", entry.device_type)
        for name, w, h in greedy_head_cases():
            head = pack(w.to(dev), None)
            got = entry.fn(w.to(dev), head)(h.to(dev)).cpu()
            want = ref(w.to(dev), head)(h.to(dev)).cpu()
            assert torch.equal(got, want), f"{name}: greedy tokens differ from the argmax of the logits"
            assert got.dtype == torch.int64
    elif entry.op == "argmax":
        for width in (1, 15, 16, 17, 100, 49152 + 3):
            x = _argmax_rows(width)
            assert torch.equal(entry.fn(x.to(dev)).cpu(), ref(x)), f"width {width}"
    else:
        pytest.fail(f"no comparison written for op {entry.op!r}: add one")


@pytest.mark.parametrize("op", sorted(ELEMENTWISE_CASES))
def test_cpu_elementwise_rows_do_not_depend_on_batch_size(op):
    """Each row is computed by the same loop however many rows the call has (and however the pool
    splits them), so a token's result does not change with its batch."""
    entry = next((e for e in KERNELS.implementations(op) if e.device_type == "cpu"), None)
    if entry is None or not entry.available():
        pytest.skip(f"no CPU kernel for {op} here")
    args = _elementwise_args(op, 2000)  # more rows than one thread takes: the pool splits them

    def first(out):
        return out if isinstance(out, torch.Tensor) else out[0]

    whole = first(entry.fn(*args))
    for rows in (1, 2, 37):
        part = first(entry.fn(*[a[:rows] if isinstance(a, torch.Tensor) and a.dim() > 1 else a for a in args]))
        assert torch.equal(part, whole[:rows]), f"{op}: row results changed with {rows} rows"
