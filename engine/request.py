"""A sequence inside the engine. A user request with n > 1 becomes n Requests (one per sample) that
share their prompt blocks through the prefix cache."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from functools import cached_property

import torch

from engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str  # unique per sequence (parent id + sample index when n > 1)
    parent_id: str
    sample_index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: tuple[int, ...] = ()
    plugin_options: dict = field(default_factory=dict)
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_cached_tokens: int = -1  # prefix-cache hit on first admission (-1: not admitted yet)
    num_preemptions: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    generator: torch.Generator | None = None  # per-request RNG when a seed is given
    # block hashes of the full blocks of all_token_ids, extended incrementally by the KV manager
    block_hashes: list = field(default_factory=list)
    # tokens a plugin asked to append as if generated (Action "inject"); fed before sampling resumes
    injected_token_ids: list[int] = field(default_factory=list)
    # scratch space for plugins, keyed by plugin name
    plugin_state: dict = field(default_factory=dict)
    # draft tokens proposed for verification in the next step (speculative decoding)
    spec_token_ids: list[int] = field(default_factory=list)
    capture_logits: bool = False
    captured_logits: list[torch.Tensor] = field(default_factory=list)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @cached_property
    def min_tokens_bans(self) -> tuple[int, ...]:
        """What min_tokens bans while it applies: the stop token ids and (unless ignore_eos) EOS. Fixed for
        the request's life (params and EOS never change), so worked out once, not on every step."""
        p = self.params
        return tuple(sorted(set(p.stop_token_ids) | (set() if p.ignore_eos else set(self.eos_token_ids))))

    @property
    def banned_token_ids(self) -> tuple[int, ...]:
        """Tokens the sampler must not pick now. Empty when nothing is banned, so the logits can be used
        as they are."""
        return self.min_tokens_bans if self.num_output_tokens < self.params.min_tokens else ()

    @property
    def argmax_only(self) -> bool:
        """Whether the next token is the plain argmax of the model's logits: greedy, no logprobs, no
        penalties and nothing banned. Such a token can be found without computing every logit."""
        p = self.params
        return p.greedy and p.logprobs is None and not p.needs_penalties and not self.banned_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED

    def max_total_tokens(self, max_model_len: int) -> int:
        if self.params.max_tokens is None:
            return max_model_len
        return min(max_model_len, self.num_prompt_tokens + self.params.max_tokens)
