"""KIVI decode attention on the CPU: a C++ kernel (csrc/kivi_attention.cpp) that reads the packed codes in
place instead of dequantizing whole blocks into memory first, which is what makes a 4-bit cache cheaper to
read than an fp32 one. Same contract as the reference in kv_quant.py."""

from __future__ import annotations

import torch

from engine.kernels import kv_quant
from engine.kernels.cpp_extension import CppExtension
from engine.kernels.registry import register_kernel

_EXT = CppExtension("tessera_kivi_attention", "kivi_attention.cpp")


@register_kernel("kivi_decode_attention", "cpu", available=_EXT.available, name="cpu_kivi_decode_attention")
def kivi_decode_attention(q: torch.Tensor, k_codes, k_scale, k_min, v_codes, v_scale, v_min, stage_k, stage_v,
                          slot_of_block, block_tables, context_lens, kbits: int, vbits: int,
                          scale: float) -> torch.Tensor:
    """q: [B, H, D] -> [B, H, D]; see kv_quant.kivi_decode_attention for the cache shapes. fp32 only,
    other dtypes go to the reference."""
    if q.dtype != torch.float32 or stage_k.dtype != torch.float32:
        return kv_quant.kivi_decode_attention(q, k_codes, k_scale, k_min, v_codes, v_scale, v_min, stage_k,
                                              stage_v, slot_of_block, block_tables, context_lens, kbits, vbits,
                                              scale)
    t = [x.contiguous() for x in (q, k_codes, k_scale, k_min, v_codes, v_scale, v_min, stage_k, stage_v,
                                  slot_of_block, block_tables, context_lens)]  # no copy when already so
    return _EXT.load().kivi_decode_attention(*t, kbits, vbits, scale)
