"""Turns per-sequence progress into per-user-request outputs: one RequestOutput per parent request
with one CompletionOutput per sample, cumulative text and the delta since the previous output."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from engine.request import Request


@dataclass(eq=False)
class SampleState:
    seq: Request
    detok: IncrementalDetokenizer
    sent_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    sent_logprobs: int = 0
    done_reported: bool = False


@dataclass(eq=False)
class RequestState:
    request_id: str
    prompt_token_ids: list[int]
    samples: list[SampleState]
    arrival_time: float
    finished_reported: bool = False
    error: str | None = None
    captured_logits: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    def assembled_logits(self) -> torch.Tensor | None:
        """Captured rows by position from the first computed one; a recompute after preemption
        overwrites the rows it repeats."""
        if not self.captured_logits:
            return None
        lo = min(s for s, _ in self.captured_logits)
        hi = max(s + t.shape[0] for s, t in self.captured_logits)
        out = torch.empty(hi - lo, self.captured_logits[0][1].shape[1])
        for start, t in self.captured_logits:
            out[start - lo:start - lo + t.shape[0]] = t
        return out

    @property
    def finished(self) -> bool:
        return all(s.seq.is_finished for s in self.samples)

    def make_output(self) -> RequestOutput:
        finished = self.finished
        outs = []
        for i, s in enumerate(self.samples):
            seq = s.seq
            done = seq.is_finished
            new_tokens = seq.output_token_ids[s.sent_tokens:]
            s.sent_tokens = len(seq.output_token_ids)
            delta_lp = None
            if s.logprobs is not None:
                delta_lp = s.logprobs[s.sent_logprobs:]
                s.sent_logprobs = len(s.logprobs)
            outs.append(CompletionOutput(
                index=i, text=s.detok.text, token_ids=list(seq.output_token_ids),
                delta_text=s.detok.delta(done), delta_token_ids=list(new_tokens),
                logprobs=s.logprobs, delta_logprobs=delta_lp,
                finish_reason=seq.finish_reason if done else None,
                stop_reason=seq.stop_reason if done else None))
        first = self.samples[0].seq
        first_token = [s.seq.first_token_time for s in self.samples if s.seq.first_token_time]
        scheduled = [s.seq.first_scheduled_time for s in self.samples if s.seq.first_scheduled_time]
        return RequestOutput(
            request_id=self.request_id, prompt_token_ids=self.prompt_token_ids, outputs=outs,
            finished=finished, num_cached_tokens=max(first.num_cached_tokens, 0), error=self.error,
            arrival_time=self.arrival_time,
            first_scheduled_time=min(scheduled) if scheduled else None,
            first_token_time=min(first_token) if first_token else None)
