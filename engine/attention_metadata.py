"""Per-step attention metadata, built by the model runner and passed to every attention layer as an
argument (never a global). Decode tokens (one query per sequence) come first in the flattened batch,
then the spans of sequences that run several tokens this step (prefill, chunked prefill, verification)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class PrefillSpan:
    query_start: int  # index of the span's first token in the flattened batch
    query_len: int
    context_len: int  # tokens in the cache after this step, query included
    block_table: torch.Tensor  # [ceil(context_len / block_size)] int64 block ids


@dataclass(slots=True)
class AttentionMetadata:
    block_size: int
    slot_mapping: torch.Tensor  # [T] int64: block_id * block_size + offset, where each new K/V goes
    num_decode_tokens: int = 0
    decode_block_tables: torch.Tensor | None = None  # [B, max_blocks] int64, padded with block 0
    decode_context_lens: torch.Tensor | None = None  # [B] int64, query included
    decode_max_context: int = 0
    prefills: list[PrefillSpan] = field(default_factory=list)
    # set by the KV storage when a device kernel wants precomputed helpers (e.g. CPU C++ path)
    extras: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])
