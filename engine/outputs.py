from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    # (token_id, logprob) of the most likely alternatives, best first
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(slots=True)
class CompletionOutput:
    """One sample of a request. `text`/`token_ids` are cumulative; `delta_*` is what arrived since the
    previous output for this sample."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    delta_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # stop | length | abort | error
    stop_reason: str | int | None = None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0
    error: str | None = None
    # wall-clock marks (time.monotonic) for metrics
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    # teacher-forced logits [num_positions, vocab] (fp32, CPU) when the request asked for them with
    # SamplingParams(extra={"return_logits": True}); row i predicts the token after position
    # num_cached_tokens + i (positions served from the prefix cache are not recomputed)
    logits: object | None = None
