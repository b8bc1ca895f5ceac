"""Runs one scheduled step: flattens the scheduled tokens (decodes first, then multi-token spans),
builds the attention metadata and slot mapping from the block tables, runs the model, and returns
the logits of the positions that produce a token."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.attention_metadata import AttentionMetadata, PrefillSpan
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request
from engine.scheduler import SchedulerOutput


@dataclass(slots=True)
class StepBatch:
    """The flattened step as the model sees it."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    order: list[Request]  # requests in batch order
    # positions that go through the LM head (batch indices) and, per request that produces tokens,
    # (request, first row in the logits, number of rows: 1, or drafts + 1 when verifying drafts)
    sample_indices: list[int] = field(default_factory=list)
    sample_rows: list[tuple[Request, int, int]] = field(default_factory=list)
    # requests that capture teacher-forced logits: (request, first batch index, count, first position)
    capture: list[tuple[Request, int, int]] = field(default_factory=list)

    def kept_rows(self) -> list[int] | None:
        """Batch indices whose final hidden state is used, in the order the model returns them: the
        sampled rows, then each captured span. None when that is every row in order (pure decode), so no
        index is built. A chunk that samples nothing keeps its last row, so no kernel runs on zero rows."""
        rows = list(self.sample_indices)
        for _, first, n, _ in self.capture:
            rows.extend(range(first, first + n))
        num_tokens = int(self.input_ids.shape[0])
        if rows == list(range(num_tokens)):
            return None
        return rows or [num_tokens - 1]


class RunnerOutput:
    """What a step produced for the rows that sample (batch.sample_indices, in that order): their final
    hidden states, turned into logits or greedy tokens only as the sampler asks, since a greedy token
    can cost much less than its row of logits. Plus any captured teacher-forced logits."""

    __slots__ = ("_hidden", "_model", "_logits", "captured")

    def __init__(self, hidden: torch.Tensor | None = None, model=None, logits: torch.Tensor | None = None,
                 captured: dict[str, tuple[int, torch.Tensor]] | None = None) -> None:
        self._hidden = hidden  # [rows, D]
        self._model = model  # its compute_logits / greedy_tokens
        self._logits = logits  # [rows, V] fp32, when the runner computed them already (CUDA graphs)
        # request id -> (first position, [n, V] fp32 logits on the CPU)
        self.captured = captured if captured is not None else {}

    @property
    def logits(self) -> torch.Tensor | None:
        """[rows, V] fp32 for every sampled row (computed on first use), or None when none samples."""
        if self._logits is None and self._hidden is not None:
            with torch.inference_mode():
                self._logits = self._model.compute_logits(self._hidden)
        return self._logits

    def logits_of(self, rows: list[int]) -> torch.Tensor:
        """rows: indices into the sampled rows -> their fp32 logits [len(rows), V]."""
        every = rows == list(range(self.num_rows))
        if self._logits is None and not every:
            with torch.inference_mode():
                return self._model.compute_logits(self._select(rows))
        logits = self.logits  # all of them, kept for later calls
        return logits if every else logits[torch.tensor(rows, device=logits.device)]

    def greedy_of(self, rows: list[int]) -> torch.Tensor:
        """rows: indices into the sampled rows -> [len(rows)] int64, the first maximum of each row's
        logits (unmodified by penalties or bans)."""
        if self._logits is not None:
            return self._logits[torch.tensor(rows, device=self._logits.device)].argmax(-1)
        with torch.inference_mode():
            return self._model.greedy_tokens(self._select(rows))

    @property
    def num_rows(self) -> int:
        source = self._logits if self._logits is not None else self._hidden
        return 0 if source is None else int(source.shape[0])

    def _select(self, rows: list[int]) -> torch.Tensor:
        h = self._hidden
        if rows == list(range(h.shape[0])):
            return h
        return h.index_select(0, torch.tensor(rows, device=h.device))


class ModelRunner:
    def __init__(self, model, kv_storages: list, kv: KVCacheManager, device: torch.device) -> None:
        self.model = model
        self.kv_storages = kv_storages
        self.kv = kv
        self.device = device
        self.block_size = kv.block_size
        # set by the engine on CUDA (engine.cuda_graph_runner.CudaGraphRunner); None runs eagerly
        self.graph_runner = None

    def prepare(self, sched: SchedulerOutput) -> StepBatch:
        bs = self.block_size
        decodes: list[Request] = []
        spans: list[Request] = []
        for rid, n in sched.num_scheduled_tokens.items():
            req = sched.requests[rid]
            (decodes if n == 1 else spans).append(req)
        order = decodes + spans
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        batch = StepBatch(None, None, None, order)  # type: ignore[arg-type]
        tables = []
        ctx_lens = []
        prefills = []
        for req in order:
            n = sched.num_scheduled_tokens[req.request_id]
            start = req.num_computed_tokens
            table = self.kv.block_table(req.request_id)
            tokens = req.all_token_ids
            drafts = sched.spec_tokens.get(req.request_id)
            if drafts:
                tokens = tokens + drafts
            first = len(ids)
            ids.extend(tokens[start:start + n])
            pos.extend(range(start, start + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if n == 1:
                tables.append(table)
                ctx_lens.append(start + 1)
            else:
                prefills.append(PrefillSpan(first, n, start + n, torch.tensor(
                    table[:-(-(start + n) // bs)], dtype=torch.long, device=self.device)))
            if drafts:
                batch.sample_rows.append((req, len(batch.sample_indices), n))
                batch.sample_indices.extend(range(first, first + n))
            elif start + n == req.num_tokens:
                batch.sample_rows.append((req, len(batch.sample_indices), 1))
                batch.sample_indices.append(len(ids) - 1)
            if req.capture_logits:
                batch.capture.append((req, first, n, start))
        meta = AttentionMetadata(bs, torch.tensor(slots, dtype=torch.long, device=self.device))
        if tables:
            width = max(-(-c // bs) for c in ctx_lens)
            padded = [t[:width] + [0] * (width - min(len(t), width)) for t in tables]
            meta.num_decode_tokens = len(tables)
            meta.decode_block_tables = torch.tensor(padded, dtype=torch.long, device=self.device)
            meta.decode_context_lens = torch.tensor(ctx_lens, dtype=torch.long, device=self.device)
            meta.decode_max_context = max(ctx_lens)
        meta.prefills = prefills
        batch.input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        batch.positions = torch.tensor(pos, dtype=torch.long, device=self.device)
        batch.meta = meta
        return batch

    @torch.inference_mode()
    def execute(self, batch: StepBatch) -> RunnerOutput:
        graphs = self.graph_runner
        if graphs is not None and graphs.can_run(batch):
            return RunnerOutput(logits=graphs.run(batch))  # pure decode: every row's logits
        rows = batch.kept_rows()
        # None: no host-to-device index copy that would wait for the forward before the LM head is queued
        keep = None if rows is None else torch.tensor(rows, dtype=torch.long, device=self.device)
        hidden = self.model(batch.input_ids, batch.positions, self.kv_storages, batch.meta, keep)
        # Only positions that produce a token reach the LM head: prefill chunks skip it, which saves the
        # largest matmul of a small model for every prompt token.
        num_sampled = len(batch.sample_indices)
        out = RunnerOutput(hidden[:num_sampled], self.model) if num_sampled else RunnerOutput()
        first = num_sampled  # captured spans follow the sampled rows in `hidden`, as kept_rows orders them
        for req, _, n, start in batch.capture:
            out.captured[req.request_id] = (start, self.model.compute_logits(hidden[first:first + n]).cpu())
            first += n
        return out
