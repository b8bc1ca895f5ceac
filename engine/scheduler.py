"""Continuous batching. Each step the scheduler gives every running request the tokens it needs
(one for a decode, a chunk for a prefill) and then admits waiting requests FCFS, all under one token
budget. One shape covers prefill, chunked prefill and decode: SchedulerOutput says how many tokens
of each request run. When blocks run out, the newest running request is preempted by recompute:
its blocks are freed and it goes back to the head of the queue with its generated tokens kept."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request, RequestStatus


@dataclass(slots=True)
class SchedulerOutput:
    # request id -> number of tokens this step (in batch order: running first, then new admissions)
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    requests: dict[str, Request] = field(default_factory=dict)
    preempted_ids: list[str] = field(default_factory=list)
    # request id -> draft tokens appended for verification this step (speculative decoding)
    spec_tokens: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, max_model_len: int) -> None:
        self.config = config
        self.kv = kv
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        now = time.monotonic()
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            if req.spec_token_ids and len(req.spec_token_ids) + 1 > budget:
                req.spec_token_ids.clear()
            num_new = self._tokens_to_run(req, budget)
            if num_new == 0:
                i += 1
                continue
            while not self.kv.allocate_slots(req, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted_ids.append(victim.request_id)
                if victim is req:
                    break
            else:
                out.num_scheduled_tokens[req.request_id] = num_new
                out.requests[req.request_id] = req
                if req.spec_token_ids:
                    out.spec_tokens[req.request_id] = list(req.spec_token_ids)
                budget -= num_new
                i += 1
                continue
            break  # req itself was preempted: everything after it is gone too

        if not out.preempted_ids:
            self._admit(out, budget, now)
        return out

    def _tokens_to_run(self, req: Request, budget: int) -> int:
        remaining = req.num_tokens - req.num_computed_tokens
        if remaining <= 0:
            return 0
        if remaining == 1 and req.spec_token_ids:
            # decode plus drafts to verify, all in one forward; drafts that do not fit are dropped
            room = min(budget, self.max_model_len - req.num_tokens + 1) - 1
            del req.spec_token_ids[max(room, 0):]
            return 1 + len(req.spec_token_ids)
        if remaining > budget and not self.config.enable_chunked_prefill:
            return 0
        return min(remaining, budget)

    def _admit(self, out: SchedulerOutput, budget: int, now: float) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            blocks, num_cached = self.kv.get_computed_blocks(req)
            remaining = req.num_tokens - num_cached
            if remaining > budget and not self.config.enable_chunked_prefill:
                break
            num_new = min(remaining, budget)
            if not self.kv.allocate_slots(req, num_new, blocks):
                break
            self.waiting.popleft()
            if req.num_cached_tokens < 0:  # count each prompt once, not again after a preemption
                req.num_cached_tokens = num_cached
                self.kv.record_lookup(req.num_prompt_tokens, min(num_cached, req.num_prompt_tokens))
            req.num_computed_tokens = num_cached
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            self.running.append(req)
            out.num_scheduled_tokens[req.request_id] = num_new
            out.requests[req.request_id] = req
            budget -= num_new

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def advance(self, out: SchedulerOutput) -> None:
        """After the forward pass: the scheduled tokens are now in the cache. Draft tokens are not
        counted; the engine appends the accepted ones as output and they are recomputed-free: their
        KV is already in place, the rejected slots get overwritten."""
        for rid, n in out.num_scheduled_tokens.items():
            req = out.requests[rid]
            if req.is_finished:
                continue
            req.num_computed_tokens += n - len(out.spec_tokens.get(rid, ()))
            req.spec_token_ids.clear()

    def cache_blocks(self, out: SchedulerOutput) -> None:
        for req in out.requests.values():
            if not req.is_finished:
                self.kv.cache_blocks(req)

    def finish(self, req: Request, reason: str, stop_reason: str | int | None = None) -> None:
        if req.is_finished:
            return
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.stop_reason = stop_reason
        if req in self.running:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        # a request that finishes in the step that computed its last full blocks still leaves them
        # to the prefix cache (e.g. max_tokens=1 or a stop on the first token)
        if reason != "abort":
            self.kv.cache_blocks(req)
        self.kv.free(req)
