"""Llama-family decoder (Llama, Mistral, Qwen2 with q/k/v bias, Qwen3 with q/k norm) over the paged KV
cache. Q/K/V and gate/up projections are fused at load time into one matmul each: fewer, larger GEMMs
are markedly faster on CPU at decode batch sizes, and the math per output element is unchanged."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from engine.attention_metadata import AttentionMetadata
from engine.models.arch import ModelArch
from engine.models.ops import ModelOps
from engine.models.rotary_embedding import RotaryTable


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps


class Attention(nn.Module):
    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = arch.num_heads, arch.num_kv_heads, arch.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(arch.hidden_size, self.q_size + 2 * self.kv_size, bias=arch.attention_bias)
        self.o_proj = nn.Linear(self.q_size, arch.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, arch.rms_norm_eps) if arch.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, arch.rms_norm_eps) if arch.qk_norm else None
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv, meta: AttentionMetadata,
                ops: ModelOps, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden], or [R, hidden] for rows: [R] int64 (every token's K/V is still
        cached; only the output projection is limited to those rows)."""
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split(
            [self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = ops.rms_norm(q, self.q_norm.weight, self.q_norm.eps)
            k = ops.rms_norm(k, self.k_norm.weight, self.k_norm.eps)
        q, k = ops.rotary(q, k, cos, sin)
        kv.write(k, v, meta)
        o = kv.attend(q, k, v, meta, self.scale).reshape(t, self.q_size)
        if rows is not None:
            o = o.index_select(0, rows)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(arch.hidden_size, 2 * arch.intermediate_size, bias=False)
        self.down_proj = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=False)
        # set at load time from gate_up_proj: silu(gate) * up as one module (on x86 CPUs one GEMM whose
        # epilogue applies the activation, so the [T, 2I] pre-activation is never written)
        self.gated: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden]."""
        return self.down_proj(self.gated(x))


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.self_attn = Attention(arch)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.mlp = MLP(arch)

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, kv,
                meta: AttentionMetadata, ops: ModelOps, rows: torch.Tensor | None = None):
        """h: [T, hidden], the previous layer's output (the embeddings for the first layer, whose residual
        is None) -> (output, residual), both [T, hidden], or [R, hidden] for rows: [R] int64."""
        if residual is None:
            residual = h
            x = ops.rms_norm(h, self.input_layernorm.weight, self.input_layernorm.eps)
        else:
            x, residual = ops.add_rms_norm(h, residual, self.input_layernorm.weight, self.input_layernorm.eps)
        h = self.self_attn(x, cos, sin, kv, meta, ops, rows)
        if rows is not None:
            residual = residual.index_select(0, rows)
        x, residual = ops.add_rms_norm(h, residual, self.post_attention_layernorm.weight,
                                       self.post_attention_layernorm.eps)
        return self.mlp(x), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        self.arch = arch
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(arch) for _ in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.lm_head = None if arch.tie_word_embeddings else nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        self.ops: ModelOps | None = None
        self.rotary: RotaryTable | None = None
        self.logits_proj: nn.Module | None = None
        self.greedy_head: nn.Module | None = None

    def prepare(self, ops: ModelOps, max_positions: int) -> None:
        """After weights are on their device: bind kernels and build the rotary table."""
        p = self.embed_tokens.weight
        self.ops = ops
        # Load-time transformation: every projection becomes the device's linear module (on x86 CPUs
        # the weight re-laid-out once for the CPU GEMM). The tied lm_head gets its own copy in that layout,
        # since the embedding lookup needs the plain table.
        for layer in self.layers:
            for parent, name in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"),
                                 (layer.mlp, "down_proj")):
                lin = getattr(parent, name)
                if isinstance(lin, nn.Linear):
                    setattr(parent, name, ops.pack_linear(lin.weight, lin.bias))
            if isinstance(layer.mlp.gate_up_proj, nn.Linear):
                layer.mlp.gated = ops.pack_gated_linear(layer.mlp.gate_up_proj.weight, ops.pack_linear,
                                                        ops.silu_and_mul)
                layer.mlp.gate_up_proj = None  # its weight lives on in the gated module only
        self.logits_proj = ops.pack_linear(self.lm_head_weight, None)
        self.greedy_head = ops.pack_greedy_head(self.lm_head_weight, self.logits_proj)
        self.rotary = RotaryTable(self.arch.head_dim, max_positions, self.arch.rope_theta,
                                  self.arch.rope_scaling, p.dtype, p.device)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_storages: list,
                meta: AttentionMetadata, rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, hidden] (normed), or only those of
        rows: [R] int64 batch indices, in that order.

        A prompt token that produces no output is needed past the last layer's attention for nothing:
        its K/V are cached by then, and no later layer reads its hidden state. So with `rows`, the last
        layer's output projection and MLP run on those rows only (1/num_layers of a prefill's matmuls
        saved). Every kernel computes a row independently of the others, so the kept rows' values are
        bit-identical to a full pass."""
        ops = self.ops
        cos, sin = self.rotary.lookup(positions)
        h = self.embed_tokens(input_ids)
        residual = None
        last = len(self.layers) - 1
        for i, (layer, kv) in enumerate(zip(self.layers, kv_storages, strict=True)):
            h, residual = layer(h, residual, cos, sin, kv, meta, ops, rows if i == last else None)
        x, _ = ops.add_rms_norm(h, residual, self.norm.weight, self.norm.eps)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [S, hidden] -> fp32 logits [S, vocab]."""
        return self.logits_proj(hidden).float()

    def greedy_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [S, hidden] -> [S] int64: the argmax (first maximum) of compute_logits(hidden), which a
        device kernel may find without computing every logit."""
        return self.greedy_head(hidden)

    # ---- weights ------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies HF-named tensors into the (fused) parameters. Every parameter must be written once."""
        params = dict(self.named_parameters())
        written: set[str] = set()
        q_rows, kv_rows = self.arch.num_heads * self.arch.head_dim, self.arch.num_kv_heads * self.arch.head_dim
        fused = {"q_proj": ("qkv_proj", 0, q_rows), "k_proj": ("qkv_proj", q_rows, kv_rows),
                 "v_proj": ("qkv_proj", q_rows + kv_rows, kv_rows)}
        inter = self.arch.intermediate_size
        fused.update({"gate_proj": ("gate_up_proj", 0, inter), "up_proj": ("gate_up_proj", inter, inter)})
        pieces: dict[str, int] = {}
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if name.startswith("lm_head.") and self.lm_head is None:
                continue  # tied: the embedding is the head
            if "rotary_emb" in name:
                continue
            target, rows = name, None
            for src, (dst, start, count) in fused.items():
                if f".{src}." in name:
                    target = name.replace(src, dst)
                    rows = (start, count)
                    break
            if target not in params:
                raise ValueError(f"unexpected weight {name!r} for {self.arch.architecture}")
            param = params[target]
            with torch.no_grad():
                if rows is None:
                    if tuple(param.shape) != tuple(tensor.shape):
                        raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, "
                                         f"expected {tuple(param.shape)}")
                    param.copy_(tensor)
                    written.add(target)
                else:
                    param[rows[0]:rows[0] + rows[1]].copy_(tensor)
                    pieces[target] = pieces.get(target, 0) + rows[1]
                    if pieces[target] == param.shape[0]:
                        written.add(target)
        missing = set(params) - written
        if missing:
            raise ValueError(f"checkpoint is missing weights: {sorted(missing)[:8]}")

    def init_random(self, seed: int) -> None:
        """Random weights of the real shape (synthetic models: speed work only)."""
        gen_device = self.embed_tokens.weight.device
        g = torch.Generator(device=gen_device).manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02, generator=g)
