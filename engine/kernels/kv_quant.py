"""KV quantization ops: asymmetric min-max quantization over groups of the last dimension, bit-packing of
the codes (two 4-bit or four 2-bit codes per byte), and attention over a paged cache whose blocks are
dequantized on gather. Portable PyTorch references; device kernels may register under the same names.

Scale and minimum are stored in fp16. They are rounded *outward* (minimum down, scale up) before the
codes are computed, so the fp16 grid still covers [min, max] of every group and the round-trip error stays
within half a quantization step of the stored scale."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.attention_metadata import AttentionMetadata
from engine.kernels.registry import REFERENCE, register_kernel

QUANT_BITS = (2, 4, 8)
SCALE_DTYPE = torch.float16
SCALE_BYTES = 2


def packed_size(n: int, bits: int) -> int:
    """Bytes of `n` codes of `bits` bits packed together."""
    if bits not in QUANT_BITS:
        raise ValueError(f"packed codes need bits in {QUANT_BITS}, got {bits}")
    if (n * bits) % 8:
        raise ValueError(f"{n} codes of {bits} bits do not fill whole bytes")
    return n * bits // 8


@register_kernel("kv_pack", REFERENCE)
def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes: [..., n] uint8 with values < 2**bits -> [..., n * bits / 8] uint8. With m = n * bits / 8 bytes,
    byte i holds codes i, m + i, 2m + i, ... from its lowest bits up: unpacking one shift at a time then
    yields a contiguous run of codes, which a CPU kernel reads with plain vector loads."""
    m = packed_size(codes.shape[-1], bits)
    if bits == 8:
        return codes
    c = codes.reshape(*codes.shape[:-1], 8 // bits, m)
    out = c[..., 0, :].clone()
    for i in range(1, 8 // bits):
        out |= c[..., i, :] << (bits * i)
    return out


@register_kernel("kv_unpack", REFERENCE)
def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """packed: [..., m] uint8 -> codes [..., m * 8 / bits] uint8 (inverse of `pack`)."""
    if bits == 8:
        return packed
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device).unsqueeze(-1)
    codes = (packed.unsqueeze(-2) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * (8 // bits))


def _outward_fp16(minv: torch.Tensor, maxv: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 (min, scale) whose grid min + scale * [0, levels] covers [minv, maxv] of each group."""
    lo = minv.to(SCALE_DTYPE)
    lo = torch.where(lo.float() > minv, torch.nextafter(lo, torch.full_like(lo, -float("inf"))), lo)
    step = (maxv - lo.float()) / levels
    sc = step.to(SCALE_DTYPE)
    sc = torch.where(sc.float() < step, torch.nextafter(sc, torch.full_like(sc, float("inf"))), sc)
    return lo, sc


@register_kernel("kv_quantize", REFERENCE)
def quantize(x: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: [..., n] with n a multiple of `group`. Returns (packed codes [..., n * bits / 8] uint8, each
    group's codes packed on their own in group * bits / 8 consecutive bytes, scale [..., n / group] fp16,
    minimum [..., n / group] fp16)."""
    n = x.shape[-1]
    if group < 1 or n % group:
        raise ValueError(f"last dimension {n} is not a multiple of the group size {group}")
    levels = (1 << bits) - 1
    xg = x.float().reshape(*x.shape[:-1], n // group, group)
    lo, sc = _outward_fp16(xg.amin(-1), xg.amax(-1), levels)
    lo_f, sc_f = lo.float().unsqueeze(-1), sc.float().unsqueeze(-1)
    safe = torch.where(sc_f > 0, sc_f, torch.ones_like(sc_f))
    codes = ((xg - lo_f) / safe).round_().clamp_(0, levels).to(torch.uint8)
    return pack(codes, bits).reshape(*x.shape[:-1], n * bits // 8), sc, lo


@register_kernel("kv_dequantize", REFERENCE)
def dequantize(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, bits: int,
               dtype: torch.dtype) -> torch.Tensor:
    """packed: [..., m] uint8, scale / minimum: [..., g] fp16 -> [..., m * 8 / bits] in `dtype`."""
    g = scale.shape[-1]
    xg = unpack(packed.reshape(*packed.shape[:-1], g, -1), bits).to(dtype)
    n = xg.shape[-1] * g
    out = torch.addcmul(minimum.to(dtype).unsqueeze(-1), xg, scale.to(dtype).unsqueeze(-1))
    return out.reshape(*packed.shape[:-1], n)


def error_bound(scale: torch.Tensor) -> torch.Tensor:
    """Largest round-trip error of a group with this stored scale: half a step."""
    return scale.float() / 2


Gather = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@register_kernel("gathered_paged_attention", REFERENCE)
def gathered_paged_attention(q: torch.Tensor, gather: Gather, meta: AttentionMetadata,
                             scale: float) -> torch.Tensor:
    """q: [T, H, D]. `gather(block_ids [n])` returns the dequantized (K, V) of those blocks, each
    [n * block_size, KVH, D] in q's dtype. Every position, this step's included, is read back from the
    cache, so decode and teacher-forced prefill see the same quantized keys and values. -> [T, H, D]."""
    out = torch.empty_like(q)
    nd = meta.num_decode_tokens
    bs = meta.block_size
    if nd:
        tables = meta.decode_block_tables  # [B, nb]
        b, nb = tables.shape
        ks, vs = gather(tables.reshape(-1))
        ks = ks.view(b, nb * bs, *ks.shape[1:]).transpose(1, 2)
        vs = vs.view(b, nb * bs, *vs.shape[1:]).transpose(1, 2)
        pos = torch.arange(nb * bs, device=q.device)
        mask = (pos.unsqueeze(0) < meta.decode_context_lens.unsqueeze(1)).view(b, 1, 1, nb * bs)
        o = F.scaled_dot_product_attention(q[:nd].unsqueeze(2), ks, vs, attn_mask=mask, scale=scale,
                                           enable_gqa=True)
        out[:nd] = o.squeeze(2)
    for span in meta.prefills:
        s, n, ctx = span.query_start, span.query_len, span.context_len
        ks, vs = gather(span.block_table)
        ks, vs = ks[:ctx].transpose(0, 1), vs[:ctx].transpose(0, 1)
        qpos = torch.arange(ctx - n, ctx, device=q.device).unsqueeze(1)
        kpos = torch.arange(ctx, device=q.device).unsqueeze(0)
        o = F.scaled_dot_product_attention(q[s:s + n].transpose(0, 1), ks, vs, attn_mask=kpos <= qpos,
                                           scale=scale, enable_gqa=True)
        out[s:s + n] = o.transpose(0, 1)
    return out


@register_kernel("kivi_decode_attention", REFERENCE)
def kivi_decode_attention(q: torch.Tensor, k_codes: torch.Tensor, k_scale: torch.Tensor, k_min: torch.Tensor,
                          v_codes: torch.Tensor, v_scale: torch.Tensor, v_min: torch.Tensor,
                          stage_k: torch.Tensor, stage_v: torch.Tensor, slot_of_block: torch.Tensor,
                          block_tables: torch.Tensor, context_lens: torch.Tensor, kbits: int, vbits: int,
                          scale: float) -> torch.Tensor:
    """Decode attention over a KIVI cache. q: [B, H, D]; keys per channel: codes [NB, KVH, D, bs*kbits/8],
    scale/min [NB, KVH, D, 1]; values per token: codes [NB, bs, KVH, D*vbits/8], scale/min
    [NB, bs, KVH, D/group]; staged full-precision blocks stage_k/stage_v [S, bs, KVH, D] found through
    slot_of_block [NB] (-1: not staged); block_tables [B, max_blocks], context_lens [B]. -> [B, H, D]."""
    b, nb = block_tables.shape
    bs, kvh, d = stage_k.shape[1:]
    ids = block_tables.reshape(-1)
    ks = dequantize(k_codes[ids], k_scale[ids], k_min[ids], kbits, q.dtype).permute(0, 3, 1, 2)
    vs = dequantize(v_codes[ids], v_scale[ids], v_min[ids], vbits, q.dtype)
    sid = slot_of_block[ids]
    staged = sid >= 0
    ks[staged] = stage_k[sid[staged]].to(q.dtype)
    vs[staged] = stage_v[sid[staged]].to(q.dtype)
    ks = ks.reshape(b, nb * bs, kvh, d).transpose(1, 2)
    vs = vs.reshape(b, nb * bs, kvh, d).transpose(1, 2)
    mask = (torch.arange(nb * bs, device=q.device).unsqueeze(0) < context_lens.unsqueeze(1)).view(b, 1, 1, nb * bs)
    o = F.scaled_dot_product_attention(q.unsqueeze(2), ks, vs, attn_mask=mask, scale=scale, enable_gqa=True)
    return o.squeeze(2)
