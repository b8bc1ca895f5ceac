"""Decode steps replayed from CUDA graphs, with the next step launched before the host has seen this
one's tokens.

Graphs: at decode batch sizes a step is a few hundred small kernels, and launching them one by one
from Python costs more than running them. One graph is captured per batch-size bucket over static
input buffers; a step of B decodes copies its inputs into the buffers and replays the smallest bucket
>= B. Padding rows get slot -1 (the cache write skips them) and context length 0 (attention returns
zeros), so they touch no real state. Only pure decode steps run here, and only when every layer's KV
storage is the dense cache with the Triton kernels, whose launches need no host values (the decode
attention grid is sized for the longest allowed context and its partitioning is fixed in tokens, so
results equal the eager launch's).

Look-ahead: while the host samples, detokenizes and schedules step t, the GPU would sit idle. When
every request of the batch takes the plain argmax (greedy, no penalties or bans), none can finish
by length at step t, the next position's block is already allocated and the engine has nothing
waiting, the runner feeds argmax(logits_t) straight back on a side stream and replays step t+1 at
once. The next step is checked on the host against what the look-ahead assumed (same requests,
positions and, exactly, the tokens the engine appended); on a match its logits are returned without
a new launch, otherwise they are discarded and the step runs normally. A discarded look-ahead only
wrote the KV slot of a position that is either recomputed or beyond a finished request."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.attention_metadata import AttentionMetadata

log = logging.getLogger(__name__)


def default_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_batch (which is always included)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = {b for b in (1, 2, 4, 8) if b <= max_batch} | set(range(16, max_batch + 1, 16)) | {max_batch}
    return sorted(sizes)


def graph_safe_storage(storage) -> bool:
    """The dense storage bound to the Triton write/attention kernels (negative slots, static grid)."""
    from engine.kv_storage import DenseKVStorage

    try:
        from engine.kernels import triton_attention
    except ImportError:
        return False
    return (type(storage) is DenseKVStorage and storage._attend is triton_attention.paged_attention
            and storage._write is triton_attention.write_kv)


def takes_plain_argmax(req) -> bool:
    """Whether the sampler's next token for req is argmax of its logits (nothing modifies them)."""
    p = req.params
    return p.greedy and not p.needs_penalties and not req.banned_token_ids


def token_at(req, index: int) -> int:
    n = len(req.prompt_token_ids)
    return req.prompt_token_ids[index] if index < n else req.output_token_ids[index - n]


@dataclass
class _LookAhead:
    requests: list  # the batch's requests, in order
    positions: list[int]  # the position each one was fed
    tokens_host: torch.Tensor  # [B] pinned: the tokens fed (argmax of the previous logits)
    tokens_ready: torch.cuda.Event
    done: torch.cuda.Event
    logits: torch.Tensor  # [B, V] fp32, valid once `done` has passed
    staged: torch.Tensor  # pinned [3, B] inputs kept alive until the copy has run


class CudaGraphRunner:
    def __init__(self, model, kv_storages: list, block_size: int, max_batch: int, max_model_len: int,
                 device: torch.device, buckets: list[int] | None = None) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.model = model
        self.kv_storages = kv_storages
        self.block_size = block_size
        self.buckets = sorted(buckets) if buckets else default_buckets(max_batch)
        if self.buckets[0] < 1:
            raise ValueError(f"bucket sizes must be >= 1, got {self.buckets}")
        self.max_batch = self.buckets[-1]
        self.max_model_len = max_model_len
        self.max_blocks = -(-max_model_len // block_size)
        self.device = device
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.full((n,), -1, dtype=torch.long, device=device)
        self.context_lens = torch.zeros(n, dtype=torch.long, device=device)
        self.block_tables = torch.zeros((n, self.max_blocks), dtype=torch.long, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.enabled = all(graph_safe_storage(s) for s in kv_storages)
        if not self.enabled:
            log.info("CUDA graphs off: a KV storage is not the dense Triton-backed cache")
        # set by the engine to allow the look-ahead: whether a step ahead may pay (nothing waiting to be
        # admitted, no plugin that changes tokens) and the KV manager's request id -> block ids
        self.lookahead_gate: Callable[[], bool] | None = None
        self.block_table_of: Callable[[str], list[int]] | None = None
        self._side = torch.cuda.Stream(device)
        self._pending: _LookAhead | None = None
        self.lookahead_hits = 0
        self.lookahead_misses = 0

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(self.block_size, self.slots[:b], num_decode_tokens=b,
                                 decode_block_tables=self.block_tables[:b], decode_context_lens=self.context_lens[:b],
                                 decode_max_context=self.max_model_len)

    def _forward(self, b: int) -> torch.Tensor:
        return self.model(self.input_ids[:b], self.positions[:b], self.kv_storages, self._meta(b))

    def _bucket(self, b: int) -> int:
        return self.buckets[bisect.bisect_left(self.buckets, b)]

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures every bucket, largest first so smaller graphs reuse the shared memory pool."""
        if not self.enabled:
            return
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        for b in reversed(self.buckets):
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # compiles kernels and settles library workspaces outside capture
                    self._forward(b)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._forward(b)
            self.graphs[b] = (graph, out)
        torch.cuda.synchronize(self.device)

    def drain(self) -> None:
        """Drops a pending look-ahead; the current stream waits for it, so nothing races its writes."""
        la, self._pending = self._pending, None
        if la is not None:
            torch.cuda.current_stream(self.device).wait_event(la.done)
            self.lookahead_misses += 1

    def can_run(self, batch) -> bool:
        """batch: model_runner.StepBatch. False also drains a pending look-ahead (eager path next)."""
        meta = batch.meta
        b = meta.num_decode_tokens
        ok = (self.enabled and bool(self.graphs) and 0 < b <= self.max_batch and not meta.prefills
              and not batch.capture and batch.input_ids.shape[0] == b
              and meta.decode_block_tables.shape[1] <= self.max_blocks)
        if not ok:
            self.drain()
        return ok

    @torch.inference_mode()
    def run(self, batch) -> torch.Tensor:
        """A pure decode StepBatch of B rows -> fp32 logits [B, V] (every row produces a token)."""
        main = torch.cuda.current_stream(self.device)
        la, self._pending = self._pending, None
        if la is not None:
            main.wait_event(la.done)
            if self._matches(la, batch):
                self.lookahead_hits += 1
                la.logits.record_stream(main)
                self._look_ahead(batch.order, la.positions, la.logits)
                return la.logits
            self.lookahead_misses += 1
        meta = batch.meta
        b = meta.num_decode_tokens
        bucket = self._bucket(b)
        graph, out = self.graphs[bucket]
        width = meta.decode_block_tables.shape[1]
        self.input_ids[:b].copy_(batch.input_ids, non_blocking=True)
        self.positions[:b].copy_(batch.positions, non_blocking=True)
        self.slots[:b].copy_(meta.slot_mapping, non_blocking=True)
        self.context_lens[:b].copy_(meta.decode_context_lens, non_blocking=True)
        self.block_tables[:b, :width].copy_(meta.decode_block_tables, non_blocking=True)
        if bucket > b:
            self.slots[b:bucket].fill_(-1)
            self.context_lens[b:bucket].zero_()
        graph.replay()
        logits = self.model.compute_logits(out[:b])
        self._look_ahead(batch.order, [r.num_computed_tokens for r in batch.order], logits)
        return logits

    def _matches(self, la: _LookAhead, batch) -> bool:
        order = batch.order
        if len(order) != len(la.requests) or batch.meta.num_decode_tokens != len(order):
            return False
        la.tokens_ready.synchronize()
        tokens = la.tokens_host[:len(order)].tolist()
        for req, old, pos, tok in zip(order, la.requests, la.positions, tokens, strict=True):
            if (req is not old or req.num_computed_tokens != pos or pos >= req.num_tokens
                    or token_at(req, pos) != tok):
                return False
        return True

    def _look_ahead(self, order: list, fed: list[int], logits: torch.Tensor) -> None:
        """Launches the step after the one fed at positions `fed`, if it is likely to be the next."""
        if self.lookahead_gate is None or self.block_table_of is None or not self.lookahead_gate():
            return
        bs = self.block_size
        positions, slots = [], []
        for req, p in zip(order, fed, strict=True):
            nxt = p + 1
            # the next position must be in the block of the current one: that block is in the static
            # tables already, and a new one would need the scheduler first
            if (nxt % bs == 0 or not takes_plain_argmax(req) or req.spec_token_ids
                    or p + 2 >= req.max_total_tokens(self.max_model_len)):
                return
            positions.append(nxt)
            slots.append(self.block_table_of(req.request_id)[nxt // bs] * bs + nxt % bs)
        b = len(order)
        bucket = self._bucket(b)
        graph, out = self.graphs[bucket]
        staged = torch.tensor([positions, slots, [p + 1 for p in positions]], dtype=torch.long).pin_memory()
        tokens_host = torch.empty(b, dtype=torch.long).pin_memory()
        side, main = self._side, torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        logits.record_stream(side)
        la = _LookAhead(list(order), positions, tokens_host, torch.cuda.Event(), torch.cuda.Event(), None, staged)
        with torch.cuda.stream(side):
            tokens = logits.argmax(-1)
            self.input_ids[:b].copy_(tokens)
            tokens_host.copy_(tokens, non_blocking=True)
            la.tokens_ready.record(side)
            dev = staged.to(self.device, non_blocking=True)
            self.positions[:b].copy_(dev[0])
            self.slots[:b].copy_(dev[1])
            self.context_lens[:b].copy_(dev[2])
            if bucket > b:
                self.slots[b:bucket].fill_(-1)
                self.context_lens[b:bucket].zero_()
            graph.replay()
            la.logits = self.model.compute_logits(out[:b])
            la.done.record(side)
        self._pending = la
