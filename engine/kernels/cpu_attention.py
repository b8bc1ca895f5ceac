"""Fused CPU paged attention: a small C++ kernel (engine/kernels/csrc/paged_attention.cpp) built on first
use with the compiler already on the machine and cached by torch under TORCH_EXTENSIONS_DIR. It serves
every query row of a step (decode and prefill alike) with one summation order, so results do not depend
on batching or chunking. If it cannot be built the registry falls back to the reference, so a machine
without a compiler is slower, not broken."""

from __future__ import annotations

import torch

from engine.attention_metadata import AttentionMetadata
from engine.kernels import reference
from engine.kernels.cpp_extension import CppExtension, fp32_heads
from engine.kernels.registry import register_kernel

_EXT = CppExtension("tessera_cpu_attention", "paged_attention.cpp")
_HEAD_MAJOR = CppExtension("tessera_cpu_head_major_attention", "head_major_attention.cpp")


def load_extension():
    """The compiled module, or None when it cannot be built here (set TESSERA_NO_CPP=1 to skip)."""
    return _EXT.load()


def available() -> bool:
    return _EXT.available()


def _rows(meta: AttentionMetadata, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query row of the step: (block tables [S, max_blocks], row -> table index [T], keys seen [T]).
    Built once per step and shared by every layer through meta.extras."""
    cached = meta.extras.get("cpu_rows")
    if cached is not None:
        return cached
    nd = meta.num_decode_tokens
    tables, seq_of, ctx_of = [], [], []
    width = meta.decode_block_tables.shape[1] if nd else 0
    for span in meta.prefills:
        width = max(width, int(span.block_table.shape[0]))
    width = max(width, 1)
    if nd:
        dt = meta.decode_block_tables
        tables.append(torch.nn.functional.pad(dt, (0, width - dt.shape[1])))
        seq_of.append(torch.arange(nd, dtype=torch.int64))
        ctx_of.append(meta.decode_context_lens.to(torch.int64))
    for j, span in enumerate(meta.prefills):
        bt = span.block_table
        tables.append(torch.nn.functional.pad(bt, (0, width - bt.shape[0])).unsqueeze(0))
        seq_of.append(torch.full((span.query_len,), nd + j, dtype=torch.int64))
        first = span.context_len - span.query_len
        ctx_of.append(torch.arange(first + 1, span.context_len + 1, dtype=torch.int64))
    rows = (torch.cat(tables).to(device), torch.cat(seq_of).to(device), torch.cat(ctx_of).to(device))
    meta.extras["cpu_rows"] = rows
    return rows


@register_kernel("paged_attention", "cpu", available=available, name="cpu_paged_attention")
def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Same contract as the reference (q: [T, H, D], caches [NB, bs, KVH, D], this step's K/V already
    written); fp32 rows go through the C++ kernel."""
    if q.dtype != torch.float32 or k_cache.dtype != torch.float32:
        return reference.paged_attention(q, k, v, k_cache, v_cache, meta, scale)
    tables, seq_of, ctx_of = _rows(meta, q.device)
    return _EXT.load().paged_attention_rows(q, k_cache, v_cache, tables, seq_of, ctx_of, scale)


@register_kernel("write_kv", "cpu", available=available, name="cpu_write_kv")
def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Same contract as the reference (k, v: [T, KVH, D]; caches [NB, bs, KVH, D]; slot_mapping [T])."""
    if not fp32_heads(k, v) or k_cache.dtype != torch.float32 or not k_cache.is_contiguous() or not v_cache.is_contiguous():
        reference.write_kv(k, v, k_cache, v_cache, slot_mapping)
        return
    _EXT.load().write_kv_rows(k, v, k_cache, v_cache, slot_mapping)


def head_major_available() -> bool:
    return _HEAD_MAJOR.available()


def head_major_supported(block_size: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether the head-major kernels serve a cache of this shape and dtype (fp32, block size and head dim
    multiples of 16, head dim up to 128)."""
    ext = _HEAD_MAJOR.load()
    return ext is not None and dtype == torch.float32 and bool(ext.supported(block_size, head_dim))


@register_kernel("paged_attention_head_major", "cpu", available=head_major_available,
                 name="cpu_head_major_paged_attention")
def paged_attention_head_major(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                               v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Same contract as the reference (q: [T, H, D], keys [NB, KVH, D, bs], values [NB, KVH, bs, D]; the
    decode rows' K/V are written here, the other rows' already are); what the kernel does not take goes to
    the reference."""
    if not (fp32_heads(q, k, v) and head_major_supported(k_cache.shape[3], k_cache.shape[2], k_cache.dtype)):
        return reference.paged_attention_head_major(q, k, v, k_cache, v_cache, meta, scale)
    tables, seq_of, ctx_of = _rows(meta, q.device)
    return _HEAD_MAJOR.load().paged_attention_rows(q, k, v, k_cache, v_cache, tables, seq_of, ctx_of,
                                                   meta.num_decode_tokens, scale)


@register_kernel("write_kv_head_major", "cpu", available=head_major_available, name="cpu_head_major_write_kv")
def write_kv_head_major(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        slot_mapping: torch.Tensor) -> None:
    """Same contract as the reference (k, v: [T, KVH, D]; keys [NB, KVH, D, bs], values [NB, KVH, bs, D])."""
    if not (fp32_heads(k, v) and head_major_supported(k_cache.shape[3], k_cache.shape[2], k_cache.dtype)):
        reference.write_kv_head_major(k, v, k_cache, v_cache, slot_mapping)
        return
    _HEAD_MAJOR.load().write_kv_rows(k, v, k_cache, v_cache, slot_mapping)
