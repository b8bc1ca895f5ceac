"""Portable PyTorch reference for every op. Device kernels are tested against these."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.attention_metadata import AttentionMetadata
from engine.kernels.registry import REFERENCE, register_kernel


@register_kernel("argmax", REFERENCE)
def argmax(x: torch.Tensor) -> torch.Tensor:
    """x: [R, V] -> [R] int64, the first index of each row's maximum (NaN counts as the largest)."""
    return x.argmax(-1)


@register_kernel("rms_norm", REFERENCE)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [T, H], weight: [H]. Computed in fp32 and cast back, as HF Llama does, so fp32/bf16 models
    match the reference implementation bit for bit."""
    dtype = x.dtype
    xf = x.to(torch.float32)
    var = xf.pow(2).mean(-1, keepdim=True)
    return weight * (xf * torch.rsqrt(var + eps)).to(dtype)


@register_kernel("add_rms_norm", REFERENCE)
def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """x, residual: [T, H]. Returns (rms_norm(x + residual), x + residual)."""
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


@register_kernel("silu_and_mul", REFERENCE)
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2*I] laid out as [gate | up]. Returns silu(gate) * up: [T, I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@register_kernel("rotary", REFERENCE)
def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q: [T, H, D], k: [T, KVH, D], cos/sin: [T, D] (already indexed by position). NeoX-style
    rotate-half, which is what HF Llama/Qwen use."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


@register_kernel("write_kv", REFERENCE)
def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v: [T, KVH, D]; caches: [num_blocks, block_size, KVH, D]; slot_mapping: [T]."""
    kvh, d = k.shape[1], k.shape[2]
    k_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def head_major_views(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-major caches (keys [NB, KVH, D, bs], values [NB, KVH, bs, D]) as token-major views
    [NB, bs, KVH, D] of the same memory."""
    return k_cache.permute(0, 3, 1, 2), v_cache.permute(0, 2, 1, 3)


@register_kernel("write_kv_head_major", REFERENCE)
def write_kv_head_major(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        slot_mapping: torch.Tensor) -> None:
    """k, v: [T, KVH, D]; k_cache: [NB, KVH, D, bs], v_cache: [NB, KVH, bs, D]; slot_mapping: [T]."""
    kt, vt = head_major_views(k_cache, v_cache)
    bs = kt.shape[1]
    blocks, offsets = slot_mapping // bs, slot_mapping % bs
    kt[blocks, offsets] = k.to(k_cache.dtype)
    vt[blocks, offsets] = v.to(v_cache.dtype)


@register_kernel("paged_attention_head_major", REFERENCE)
def paged_attention_head_major(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                               v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """paged_attention over head-major caches (keys [NB, KVH, D, bs], values [NB, KVH, bs, D]). Unlike the
    token-major op, the decode rows' (the first meta.num_decode_tokens rows') K/V are written here, not
    before: a device kernel writes each where it reads that block anyway. The other rows' K/V must
    already be in the cache (write_kv_head_major)."""
    nd = meta.num_decode_tokens
    if nd:
        write_kv_head_major(k[:nd], v[:nd], k_cache, v_cache, meta.slot_mapping[:nd])
    kt, vt = head_major_views(k_cache, v_cache)
    return paged_attention(q, k, v, kt, vt, meta, scale)


def _gather(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """cache: [NB, bs, KVH, D], block_table: [nb] -> [length, KVH, D]."""
    return cache.index_select(0, block_table).reshape(-1, *cache.shape[2:])[:length]


@register_kernel("paged_attention", REFERENCE)
def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, KVH, D] (this step's keys/values, already written to the cache);
    caches: [NB, bs, KVH, D]. Returns [T, H, D]. Causal within each sequence."""
    out = torch.empty_like(q)
    nd = meta.num_decode_tokens
    if nd:
        out[:nd] = _decode(q[:nd], k_cache, v_cache, meta, scale)
    for span in meta.prefills:
        s, n = span.query_start, span.query_len
        qs = q[s:s + n].transpose(0, 1)  # [H, n, D]
        if span.context_len == n:
            # Nothing cached before this span: attend to this step's own keys, plain causal.
            ks, vs = k[s:s + n].transpose(0, 1), v[s:s + n].transpose(0, 1)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        else:
            ks = _gather(k_cache, span.block_table, span.context_len).transpose(0, 1).to(q.dtype)
            vs = _gather(v_cache, span.block_table, span.context_len).transpose(0, 1).to(q.dtype)
            first = span.context_len - n
            qpos = torch.arange(first, span.context_len, device=q.device).unsqueeze(1)
            kpos = torch.arange(span.context_len, device=q.device).unsqueeze(0)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=kpos <= qpos, scale=scale,
                                               enable_gqa=True)
        out[s:s + n] = o.transpose(0, 1)
    return out


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
            scale: float) -> torch.Tensor:
    """q: [B, H, D] one query per sequence -> [B, H, D]."""
    tables = meta.decode_block_tables  # [B, nb]
    b, nb = tables.shape
    bs = k_cache.shape[1]
    kvh, d = k_cache.shape[2], k_cache.shape[3]
    ks = k_cache.index_select(0, tables.reshape(-1)).view(b, nb * bs, kvh, d).transpose(1, 2)
    vs = v_cache.index_select(0, tables.reshape(-1)).view(b, nb * bs, kvh, d).transpose(1, 2)
    pos = torch.arange(nb * bs, device=q.device)
    mask = (pos.unsqueeze(0) < meta.decode_context_lens.unsqueeze(1)).view(b, 1, 1, nb * bs)
    o = F.scaled_dot_product_attention(q.unsqueeze(2), ks.to(q.dtype), vs.to(q.dtype), attn_mask=mask,
                                       scale=scale, enable_gqa=True)
    return o.squeeze(2)


class DenseLinear(torch.nn.Module):
    """y = x @ weight^T + bias over the weight tensor as loaded (shared, not copied)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in] -> [T, out]."""
        return F.linear(x, self.weight, self.bias)


@register_kernel("pack_linear", REFERENCE)
def pack_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Module:
    """weight: [out, in], bias: [out] or None -> a module computing the linear map. Device kernels
    may return the weight re-laid-out for their GEMM; the reference keeps it as is."""
    return DenseLinear(weight, bias)


class GatedLinear(torch.nn.Module):
    """silu(gate) * up of one linear map whose output is laid out [gate | up]."""

    def __init__(self, linear: torch.nn.Module, activation, in_features: int) -> None:
        super().__init__()
        self.linear, self.activation, self.in_features = linear, activation, in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in] -> [T, I]."""
        return self.activation(self.linear(x))


@register_kernel("pack_gated_linear", REFERENCE)
def pack_gated_linear(weight: torch.Tensor, linear=pack_linear, activation=silu_and_mul) -> torch.nn.Module:
    """weight: [2I, in] laid out [gate | up] -> a module computing silu(x W_gate^T) * (x W_up^T): [T, I].
    Composed of the given linear packer and activation (a device's own, where it has no fused kernel)."""
    return GatedLinear(linear(weight, None), activation, weight.shape[1])


class ArgmaxHead(torch.nn.Module):
    """Greedy tokens as the argmax of the LM head's full logits."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [R, D] -> [R] int64, the first maximum of each row's logits."""
        return argmax(self.head(hidden).float())


@register_kernel("pack_greedy_head", REFERENCE)
def pack_greedy_head(weight: torch.Tensor, head: torch.nn.Module) -> torch.nn.Module:
    """weight: [V, D] the LM head weight, head: the module computing its logits -> a module mapping hidden
    states [R, D] to their greedy tokens [R] int64. Device kernels may find the argmax with less work;
    the answer must stay the same."""
    return ArgmaxHead(head)
