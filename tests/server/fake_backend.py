"""A fake EngineBackend for fast server tests: no model, tokens come from a canned text.

It follows the protocol's contract the way the real engine does: cumulative outputs with deltas, n
samples, max_tokens / stop strings / stop ids / EOS, logprobs, seeds, abort (explicit, by closing the
stream, or by cancelling its task), a KV block pool whose blocks are freed however a request ends, a
max_num_seqs limit with a waiting queue, and stats. It holds no loop-bound asyncio objects, so one fake
can serve apps run by any test client."""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field

from engine.loader.default_model import ensure_model_dir
from engine.loader.tokenizer import Tokenizer
from engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from engine.sampling_params import SamplingParams
from engine.stats import EngineStats

CANNED = "The quick brown fox jumps over the lazy dog. It was a sunny day, and everyone was happy."

_TOKENIZER: Tokenizer | None = None


def default_tokenizer() -> Tokenizer:
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = Tokenizer(ensure_model_dir(progress=False))
    return _TOKENIZER


@dataclass
class _Sample:
    index: int
    offset: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    blocks: int = 0


@dataclass
class _Request:
    request_id: str
    prompt_len: int
    aborted: bool = False
    running: bool = False
    samples: list[_Sample] = field(default_factory=list)
    prompt_blocks: int = 0


class FakeBackend:
    def __init__(self, text: str = CANNED, *, model_name: str = "fake-model", max_model_len: int = 2048,
                 token_delay: float = 0.0, num_blocks: int = 4096, block_size: int = 16,
                 max_num_seqs: int = 64, max_generated: int | None = None,
                 tokenizer: Tokenizer | None = None) -> None:
        self.model_name = model_name
        self.max_model_len = max_model_len
        self._tokenizer = tokenizer or default_tokenizer()
        self.text = text
        self.token_delay = token_delay
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.max_num_seqs = max_num_seqs
        self.max_generated = max_generated  # caps every sample (fuzzing must stay fast)
        self.eos_id = (self._tokenizer.eos_token_ids or (0,))[0]
        self.started = False
        self.fail_mode: str | None = None  # "error_output" | "raise"
        self.calls: list[tuple[list[int], SamplingParams, str, dict | None]] = []
        self._requests: dict[str, _Request] = {}
        self._totals = EngineStats()

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def start(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        for req in self._requests.values():
            req.aborted = True
        self.started = False

    async def abort(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is not None:
            req.aborted = True

    def stats(self) -> EngineStats:
        running = sum(1 for r in self._requests.values() if r.running)
        used = sum(r.prompt_blocks + sum(s.blocks for s in r.samples) for r in self._requests.values())
        t = self._totals
        return EngineStats(num_running=running, num_waiting=len(self._requests) - running,
                           num_blocks_total=self.num_blocks, num_blocks_free=self.num_blocks - used,
                           prompt_tokens_total=t.prompt_tokens_total,
                           generation_tokens_total=t.generation_tokens_total, num_steps=t.num_steps,
                           last_step_time=t.last_step_time)

    # ---- generation ------------------------------------------------------------------------------
    def _offset(self, params: SamplingParams, index: int, length: int) -> int:
        if params.greedy:
            return 0
        rng = random.Random(None if params.seed is None else params.seed * 1009 + index)
        return rng.randrange(length)

    def _step_sample(self, s: _Sample, canned: list[int], params: SamplingParams, budget: int) -> None:
        k = len(s.token_ids)
        if k >= len(canned) and not params.ignore_eos:
            s.token_ids.append(self.eos_id)
            s.finish_reason = "stop"
            return
        tok = canned[(s.offset + k) % len(canned)]
        s.token_ids.append(tok)
        s.text = self._tokenizer.decode(s.token_ids, skip_special_tokens=params.skip_special_tokens)
        if tok in params.stop_token_ids:
            s.finish_reason, s.stop_reason = "stop", tok
            return
        for stop in params.stop:
            i = s.text.find(stop)
            if i >= 0:
                s.text = s.text[:i + len(stop)] if params.include_stop_str_in_output else s.text[:i]
                s.finish_reason, s.stop_reason = "stop", stop
                return
        if len(s.token_ids) >= budget:
            s.finish_reason = "length"

    def _logprobs(self, params: SamplingParams, tok: int) -> TokenLogprob:
        top = [(tok, -0.25)] + [((tok + j) % 1000 + 10, -1.0 - j) for j in range(1, params.logprobs or 0)]
        return TokenLogprob(token_id=tok, logprob=-0.25, top=top[:params.logprobs or 0])

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str,
                       plugin_options: dict | None = None):
        if not prompt_token_ids:
            raise ValueError("empty prompt")
        budget = params.max_tokens if params.max_tokens is not None else self.max_model_len - len(prompt_token_ids)
        if len(prompt_token_ids) + budget > self.max_model_len:
            raise ValueError(f"prompt ({len(prompt_token_ids)}) + max_tokens ({budget}) > {self.max_model_len}")
        if self.max_generated is not None:
            budget = min(budget, self.max_generated)
        self.calls.append((list(prompt_token_ids), params, request_id, plugin_options))
        canned = self._tokenizer.encode(self.text) or [self.eos_id]
        req = _Request(request_id, len(prompt_token_ids),
                       samples=[_Sample(i, self._offset(params, i, len(canned))) for i in range(params.n)])
        self._requests[request_id] = req
        arrival = time.monotonic()
        first_scheduled = first_token = None
        try:
            while not req.running:  # wait for a slot, like the scheduler's waiting queue
                if req.aborted:
                    break
                if sum(1 for r in self._requests.values() if r.running) < self.max_num_seqs:
                    req.running = True
                    req.prompt_blocks = math.ceil(req.prompt_len / self.block_size)
                    self._totals.prompt_tokens_total += req.prompt_len
                    first_scheduled = time.monotonic()
                else:
                    await asyncio.sleep(0.002)
            while True:
                await asyncio.sleep(self.token_delay)
                if self.fail_mode == "raise":
                    raise RuntimeError("fake engine failure")
                outputs = []
                # Like the engine, every output lists every sample, finished ones included.
                for s in req.samples:
                    before_ids, before_text = len(s.token_ids), s.text
                    if s.finish_reason is not None:
                        pass
                    elif req.aborted:
                        s.finish_reason = "abort"
                    else:
                        self._step_sample(s, canned, params, budget)
                        s.blocks = math.ceil(len(s.token_ids) / self.block_size)
                    delta_ids = s.token_ids[before_ids:]
                    lps = [self._logprobs(params, t) for t in delta_ids] if params.logprobs is not None else None
                    outputs.append(CompletionOutput(
                        index=s.index, text=s.text, token_ids=list(s.token_ids), delta_text=s.text[len(before_text):],
                        delta_token_ids=delta_ids, delta_logprobs=lps, finish_reason=s.finish_reason,
                        stop_reason=s.stop_reason))
                    self._totals.generation_tokens_total += len(delta_ids)
                self._totals.num_steps += 1
                self._totals.last_step_time = time.monotonic()
                first_token = first_token or time.monotonic()
                finished = all(s.finish_reason is not None for s in req.samples)
                error = "fake plugin exploded" if self.fail_mode == "error_output" else None
                yield RequestOutput(request_id=request_id, prompt_token_ids=list(prompt_token_ids),
                                    outputs=outputs, finished=finished or error is not None, error=error,
                                    arrival_time=arrival, first_scheduled_time=first_scheduled,
                                    first_token_time=first_token)
                if finished or error:
                    return
        finally:
            # However the stream ends (finished, aborted, closed, cancelled), the blocks go back.
            self._requests.pop(request_id, None)

    def idle(self) -> bool:
        s = self.stats()
        return s.num_running == 0 and s.num_waiting == 0 and s.num_blocks_free == s.num_blocks_total
