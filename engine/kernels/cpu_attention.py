"""Fused CPU path for decode attention: a small C++ kernel (engine/kernels/csrc) built on first use with
the compiler already on the machine and cached by torch under TORCH_EXTENSIONS_DIR. If it cannot be
built the registry falls back to the reference, so a machine without a compiler is slower, not broken."""

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
_SRC = Path(__file__).parent / "csrc" / "paged_decode_attention.cpp"
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


@register_kernel("paged_attention", "cpu", available=available, name="cpu_paged_attention")
def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Same contract as the reference; decode tokens (fp32) go through the C++ kernel."""
    nd = meta.num_decode_tokens
    if not nd or q.dtype != torch.float32 or k_cache.dtype != torch.float32:
        return reference.paged_attention(q, k, v, k_cache, v_cache, meta, scale)
    out = torch.empty_like(q)
    out[:nd] = _module.paged_decode_attention(q[:nd], k_cache, v_cache, meta.decode_block_tables,
                                              meta.decode_context_lens, scale)
    if meta.prefills:
        # the reference handles the spans; decode rows it computes are overwritten above anyway
        spans = AttentionMetadata(meta.block_size, meta.slot_mapping, prefills=meta.prefills)
        out[nd:] = reference.paged_attention(q, k, v, k_cache, v_cache, spans, scale)[nd:]
    return out
