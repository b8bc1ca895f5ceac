"""Triton kernels over the paged KV cache ([num_blocks, block_size, KVH, D] keys and values) for CUDA:
the cache write, decode attention (one query per sequence, split into fixed-size partitions of the
context so long contexts still fill the GPU) and variable-length prefill attention (flash attention
over every multi-token span of the step in one launch, reading keys through the block tables, so
chunked prefill with a cached prefix takes the same path).

Numerics do not depend on the batch: each sequence's result depends only on its own context length
(the partitioning is fixed in tokens, not in programs), so a CUDA graph captured for a larger padded
batch produces the same bits as the eager launch. Rows whose context length is 0 (graph padding) get
zeros, and a negative slot skips the cache write."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention_metadata import AttentionMetadata
from engine.kernels.registry import register_kernel
from engine.kernels.triton_availability import triton_cuda_available

LOG2E = 1.4426950408889634
DECODE_PARTITION = 512  # tokens of context per decode program; fixed so numerics ignore the grid
DECODE_BLOCK_N = 64


# ---- cache write ------------------------------------------------------------------------------------
@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slots_ptr, stride_kt, stride_vt,
                     ROW: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slots_ptr + t)
    if slot < 0:
        return
    offs = tl.arange(0, BLOCK)
    mask = offs < ROW
    k = tl.load(k_ptr + t * stride_kt + offs, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + offs, mask=mask)
    dst = slot.to(tl.int64) * ROW + offs
    tl.store(kc_ptr + dst, k.to(kc_ptr.dtype.element_ty), mask=mask)
    tl.store(vc_ptr + dst, v.to(vc_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[T, KVH, D] with each token's KVH*D values contiguous (views of the fused QKV output are)."""
    if x.stride(2) != 1 or x.stride(1) != x.shape[2]:
        x = x.contiguous()
    return x


@register_kernel("write_kv", "cuda", available=triton_cuda_available, name="triton_write_kv")
def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v: [T, KVH, D]; caches: [num_blocks, block_size, KVH, D]; slot_mapping: [T] (negative: skip)."""
    t = k.shape[0]
    if t == 0:
        return
    k, v = _rows(k), _rows(v)
    row = k.shape[1] * k.shape[2]
    _write_kv_kernel[(t,)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0),
                           ROW=row, BLOCK=triton.next_power_of_2(row), num_warps=4 if row >= 512 else 1)


# ---- decode -----------------------------------------------------------------------------------------
@triton.jit
def _decode_kernel(q_ptr, kc_ptr, vc_ptr, tables_ptr, ctx_ptr, out_ptr, pacc_ptr, pml_ptr, qk_scale,
                   stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_tb, stride_ot, stride_oh,
                   num_parts, NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr,
                   BLOCK_N: tl.constexpr, PARTITION: tl.constexpr, SINGLE: tl.constexpr,
                   PRECISION: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    part = tl.program_id(2)
    ctx = tl.load(ctx_ptr + b).to(tl.int32)
    start = part * PARTITION
    if not SINGLE:
        if start >= ctx:
            return
    end = tl.minimum(start + PARTITION, ctx)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = kvh * GROUP + offs_g
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_g[:, None] & mask_d[None, :], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    table = tables_ptr + b.to(tl.int64) * stride_tb
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        blk = tl.load(table + offs_n // PAGE, mask=mask_n, other=0).to(tl.int64)
        row = blk * stride_kb + (offs_n % PAGE) * stride_ks + kvh * stride_kh
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(kc_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(vc_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PRECISION)
        m_i = m_new
    if SINGLE:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        tl.store(out_ptr + b.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask_g[:, None] & mask_d[None, :])
    else:
        base = (b.to(tl.int64) * NUM_HEADS + heads) * num_parts + part
        tl.store(pacc_ptr + base[:, None] * BLOCK_D + offs_d[None, :], acc, mask=mask_g[:, None])
        tl.store(pml_ptr + base * 2, m_i, mask=mask_g)
        tl.store(pml_ptr + base * 2 + 1, l_i, mask=mask_g)


@triton.jit
def _decode_reduce_kernel(pacc_ptr, pml_ptr, ctx_ptr, out_ptr, stride_ot, stride_oh, num_parts,
                          NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                          PARTITION: tl.constexpr):
    # Sequential over the partitions a sequence used, so the order of the sums depends on its context
    # length alone, never on how many partitions the grid was sized for.
    b = tl.program_id(0)
    h = tl.program_id(1)
    ctx = tl.load(ctx_ptr + b).to(tl.int32)
    used = (ctx + PARTITION - 1) // PARTITION
    offs_d = tl.arange(0, BLOCK_D)
    base = (b.to(tl.int64) * NUM_HEADS + h) * num_parts
    m_max = tl.full([1], float("-inf"), tl.float32)
    for p in range(0, used):
        m_max = tl.maximum(m_max, tl.load(pml_ptr + (base + p) * 2))
    l_tot = tl.zeros([1], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for p in range(0, used):
        w = tl.exp2(tl.load(pml_ptr + (base + p) * 2) - m_max)
        l_tot += tl.load(pml_ptr + (base + p) * 2 + 1) * w
        acc += tl.load(pacc_ptr + (base + p) * BLOCK_D + offs_d) * w
    out = acc / tl.where(l_tot == 0.0, 1.0, l_tot)
    tl.store(out_ptr + b.to(tl.int64) * stride_ot + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, context_lens: torch.Tensor, max_context: int, scale: float,
                     out: torch.Tensor) -> None:
    """q: [B, H, D] one query per sequence; caches: [NB, bs, KVH, D]; block_tables: [B, max_blocks];
    context_lens: [B] (query included; 0 gives a zero row); max_context: an upper bound on
    context_lens (only sizes the grid); out: [B, H, D], written in place."""
    bsz, heads, dim = q.shape
    if bsz == 0:
        return
    kvh = k_cache.shape[2]
    group = heads // kvh
    num_parts = max(1, -(-max_context // DECODE_PARTITION))
    single = num_parts == 1
    block_d = triton.next_power_of_2(dim)
    if single:
        pacc = pml = out  # unused
    else:
        pacc = torch.empty(bsz * heads * num_parts * block_d, dtype=torch.float32, device=q.device)
        pml = torch.empty(bsz * heads * num_parts * 2, dtype=torch.float32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _decode_kernel[(bsz, kvh, num_parts)](
        q, k_cache, v_cache, block_tables, context_lens, out, pacc, pml, scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1), num_parts,
        NUM_HEADS=heads, GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=dim,
        BLOCK_D=block_d, PAGE=k_cache.shape[1], BLOCK_N=DECODE_BLOCK_N, PARTITION=DECODE_PARTITION,
        SINGLE=single, PRECISION=precision, num_warps=4)
    if not single:
        _decode_reduce_kernel[(bsz, heads)](
            pacc, pml, context_lens, out, out.stride(0), out.stride(1), num_parts, NUM_HEADS=heads,
            HEAD_DIM=dim, BLOCK_D=block_d, PARTITION=DECODE_PARTITION, num_warps=1)


# ---- variable-length prefill ------------------------------------------------------------------------
@triton.jit
def _prefill_tile(q, acc, m_i, l_i, kc_ptr, vc_ptr, table, kvh, lo, hi, qpos, offs_d, mask_d, qk_scale,
                  stride_kb, stride_ks, stride_kh, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        blk = tl.load(table + offs_n // PAGE, mask=mask_n, other=0).to(tl.int64)
        row = blk * stride_kb + (offs_n % PAGE) * stride_ks + kvh * stride_kh
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(kc_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if CAUSAL:
            s = tl.where((offs_n[None, :] <= qpos[:, None]) & mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(vc_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _prefill_kernel(q_ptr, kc_ptr, vc_ptr, out_ptr, span_ptr, tables_ptr, tiles_ptr, qk_scale,
                    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_tb, stride_ot, stride_oh,
                    num_tiles, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    span = tl.load(tiles_ptr + pid)
    m0 = tl.load(tiles_ptr + num_tiles + pid)
    q_start = tl.load(span_ptr + span * 3)
    q_len = tl.load(span_ptr + span * 3 + 1)
    ctx = tl.load(span_ptr + span * 3 + 2)
    kvh = head // GROUP
    prefix = ctx - q_len
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < q_len
    mask_d = offs_d < HEAD_DIM
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    qpos = prefix + offs_m
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    table = tables_ptr + span.to(tl.int64) * stride_tb
    # keys before the tile's first query need no causal mask; the diagonal tiles do
    full = ((prefix + m0) // BLOCK_N) * BLOCK_N
    hi = prefix + tl.minimum(m0 + BLOCK_M, q_len)
    acc, m_i, l_i = _prefill_tile(q, acc, m_i, l_i, kc_ptr, vc_ptr, table, kvh, 0, full, qpos, offs_d,
                                  mask_d, qk_scale, stride_kb, stride_ks, stride_kh, PAGE, BLOCK_N,
                                  False, PRECISION)
    acc, m_i, l_i = _prefill_tile(q, acc, m_i, l_i, kc_ptr, vc_ptr, table, kvh, full, hi, qpos, offs_d,
                                  mask_d, qk_scale, stride_kb, stride_ks, stride_kh, PAGE, BLOCK_N,
                                  True, PRECISION)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def _prefill_config(dtype: torch.dtype, dim: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): fp32 tiles are twice the bytes, so smaller."""
    if dtype == torch.float32 or dim > 128:
        return 64, 32, 4
    return 128, 64, 8


def _prefill_plan(meta: AttentionMetadata, block_m: int, device: torch.device) -> dict:
    """Per-step launch metadata, built once per step and shared by every layer through meta.extras."""
    key = ("triton_prefill", block_m)
    plan = meta.extras.get(key)
    if plan is not None:
        return plan
    spans = meta.prefills
    span_rows: list[int] = []
    tile_span: list[int] = []
    tile_m0: list[int] = []
    for i, sp in enumerate(spans):
        span_rows.extend((sp.query_start, sp.query_len, sp.context_len))
        for m0 in range(0, sp.query_len, block_m):
            tile_span.append(i)
            tile_m0.append(m0)
    tables = torch.nn.utils.rnn.pad_sequence([sp.block_table for sp in spans], batch_first=True)
    plan = {"spans": torch.tensor(span_rows, dtype=torch.int32).to(device, non_blocking=True),
            "tiles": torch.tensor(tile_span + tile_m0, dtype=torch.int32).to(device, non_blocking=True),
            "num_tiles": len(tile_span), "tables": tables}
    meta.extras[key] = plan
    return plan


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                      scale: float, out: torch.Tensor) -> None:
    """q, out: [T, H, D]; every span in meta.prefills is attended causally over its whole context
    (cached prefix plus this step's tokens, all already in the cache); rows of out outside the spans
    are left untouched."""
    if not meta.prefills:
        return
    heads, dim = q.shape[1], q.shape[2]
    block_m, block_n, warps = _prefill_config(q.dtype, dim)
    plan = _prefill_plan(meta, block_m, q.device)
    tables = plan["tables"]
    _prefill_kernel[(plan["num_tiles"], heads)](
        q, k_cache, v_cache, out, plan["spans"], tables, plan["tiles"], scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), tables.stride(0),
        out.stride(0), out.stride(1), plan["num_tiles"], GROUP=heads // k_cache.shape[2], HEAD_DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim), PAGE=k_cache.shape[1], BLOCK_M=block_m, BLOCK_N=block_n,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=warps, num_stages=2)


@register_kernel("paged_attention", "cuda", available=triton_cuda_available, name="triton_paged_attention")
def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, KVH, D] (already written to the cache; unused here); caches:
    [NB, bs, KVH, D]. Returns [T, H, D]: decode rows first, then the multi-token spans."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    nd = meta.num_decode_tokens
    if nd:
        decode_attention(q[:nd], k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens,
                         meta.decode_max_context, scale, out[:nd])
    prefill_attention(q, k_cache, v_cache, meta, scale, out)
    return out
