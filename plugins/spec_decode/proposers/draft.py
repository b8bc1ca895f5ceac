"""Model drafts: a layer-skipping self-draft of the target (default) or a separately loaded model that
shares the tokenizer (`draft_model`, optionally in another dtype). Drafts are drawn from the draft's
distribution processed like the target's (argmax when the request is greedy), and that distribution is
returned for rejection sampling and for the judge."""

from __future__ import annotations

from typing import Any

import torch

from engine.request import Request
from engine.sampler import draw
from plugins.spec_decode.draft_model import DraftModel, evenly_kept_layers, layer_skip_view, parse_layers
from plugins.spec_decode.proposal import Proposal
from plugins.spec_decode.proposers.base import Proposer
from plugins.spec_decode.proposers.registry import register_proposer
from plugins.spec_decode.verifiers.target_probs import target_probs

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _choose(logits: torch.Tensor, requests: list[Request]) -> tuple[list[int], torch.Tensor]:
    """logits: [B, V] draft logits -> (token per row, [B, V] distribution it came from)."""
    tokens: list[int] = []
    dists = []
    for i, req in enumerate(requests):
        q = target_probs(logits[i:i + 1], req)[0]
        if req.params.greedy:
            tokens.append(int(q.argmax()))
        else:
            tokens.append(int(draw(q, req.generator)))
        dists.append(q)
    return tokens, torch.stack(dists)


@register_proposer("draft")
class DraftProposer(Proposer):
    gives_probs = True

    def __init__(self, draft: DraftModel) -> None:
        self.draft = draft

    @classmethod
    def build(cls, plugin: Any, engine: Any) -> DraftProposer:
        arch = engine.arch
        num_blocks = max(2, int(engine.kv.num_blocks * plugin.draft_cache_fraction))
        if plugin.draft_model:
            return cls(cls._separate(plugin, engine, num_blocks))
        if plugin.draft_layers:
            keep = parse_layers(plugin.draft_layers, arch.num_layers)
        else:
            keep = evenly_kept_layers(arch.num_layers, plugin.draft_layer_ratio)
        model = layer_skip_view(engine.model, keep)
        return cls(DraftModel(model, len(keep), arch.num_kv_heads, arch.head_dim, engine.dtype,
                              engine.platform.device, num_blocks, engine.kv.block_size))

    @staticmethod
    def _separate(plugin: Any, engine: Any, num_blocks: int) -> DraftModel:
        from engine.loader.model_loader import build_model
        from engine.loader.model_registry import resolve_model
        from engine.models.ops import ModelOps

        resolved = resolve_model(plugin.draft_model)
        arch = resolved.arch
        if arch.vocab_size != engine.arch.vocab_size:
            raise ValueError(f"draft model {plugin.draft_model!r} has vocabulary {arch.vocab_size}, the target "
                             f"{engine.arch.vocab_size}: a draft must share the tokenizer")
        if plugin.draft_dtype != "auto" and plugin.draft_dtype not in _DTYPES:
            raise ValueError(f"draft_dtype must be auto or one of {sorted(_DTYPES)}, got {plugin.draft_dtype!r}")
        dtype = engine.dtype if plugin.draft_dtype == "auto" else _DTYPES[plugin.draft_dtype]
        device = engine.platform.device
        model = build_model(resolved, dtype, device, seed=engine.config.model.seed)
        model.prepare(ModelOps.for_device(device.type), engine.max_model_len)
        return DraftModel(model, arch.num_layers, arch.num_kv_heads, arch.head_dim, dtype, device, num_blocks,
                          engine.kv.block_size)

    def propose(self, requests: list[Request], ks: dict[str, int]) -> dict[str, Proposal]:
        drafted = self.draft.draft(requests, ks, _choose)
        return {rid: Proposal(tokens, probs) for rid, (tokens, probs) in drafted.items()}

    def release(self, request: Request) -> None:
        self.draft.release(request.request_id)
