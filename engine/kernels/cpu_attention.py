"""Fused CPU paged attention: a small C++ kernel (engine/kernels/csrc/paged_attention.cpp) built on first
use with the compiler already on the machine and cached by torch under TORCH_EXTENSIONS_DIR. It serves
every query row of a step (decode and prefill alike) with one summation order, so results do not depend
on batching or chunking. If it cannot be built the registry falls back to the reference, so a machine
without a compiler is slower, not broken."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path

import torch

from engine.attention_metadata import AttentionMetadata
from engine.kernels import reference
from engine.kernels.registry import register_kernel

log = logging.getLogger(__name__)
_SRC = Path(__file__).parent / "csrc" / "paged_attention.cpp"
_lock = threading.Lock()
_module = None
_failed = False


def _cpu_tag() -> str:
    # -march=native code must never be reused on a different CPU: the build dir is keyed by its flags
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def load_extension():
    """The compiled module, or None when it cannot be built here (set TESSERA_NO_CPP=1 to skip)."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    with _lock:
        if _module is not None or _failed:
            return _module
        if os.environ.get("TESSERA_NO_CPP") == "1" or platform.machine() not in ("x86_64", "AMD64", "aarch64"):
            _failed = True
            return None
        try:
            from torch.utils.cpp_extension import load

            flags = ["-O3", "-fopenmp"] + (["-march=native"] if platform.machine() == "x86_64" else [])
            _module = load(name=f"tessera_cpu_attention_{_cpu_tag()}", sources=[str(_SRC)],
                           extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler, no ninja, headers missing...
            log.warning("CPU attention kernel unavailable, using the reference: %s", exc)
            _failed = True
    return _module


def available() -> bool:
    return load_extension() is not None


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
    return _module.paged_attention_rows(q, k_cache, v_cache, tables, seq_of, ctx_of, scale)
