"""Fidelity of a modified engine against the unmodified one on the same inputs (DESIGN.md section 9):
mean KL divergence KL(reference || modified) of teacher-forced next-token distributions, top-1
agreement of those distributions, and the length of the common prefix of greedy continuations."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class FidelityData:
    """Token ids to evaluate on: teacher-forced sequences, and prompts for greedy continuations."""

    sequences: list[list[int]]
    prompts: list[list[int]]
    continuation_tokens: int = 32

    def __post_init__(self) -> None:
        if not self.sequences or any(len(s) < 2 for s in self.sequences):
            raise ValueError("FidelityData needs at least one sequence of two or more tokens")
        if any(not p for p in self.prompts):
            raise ValueError("FidelityData prompts must not be empty")
        if self.continuation_tokens < 1:
            raise ValueError("continuation_tokens must be >= 1")


@dataclass(frozen=True)
class FidelityReport:
    kl_mean: float
    top1_agreement: float
    match_len_mean: float
    num_positions: int
    num_prompts: int
    continuation_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def teacher_forced_logprobs(engine, sequences: list[list[int]], progress: bool = False) -> list[torch.Tensor]:
    """Log-probabilities [len - 1, V] (fp32, CPU) of the next token at every position but the last, each
    sequence run as a prompt whose logits are captured."""
    params = SamplingParams(temperature=0.0, max_tokens=1, extra={"return_logits": True})
    outs = engine.generate(sequences, params, progress=progress)
    result = []
    for seq, out in zip(sequences, outs, strict=True):
        if out.error or out.logits is None or out.logits.shape[0] < len(seq):
            raise RuntimeError(f"teacher-forced run failed: {out.error or 'logits were not captured'}"
                               " (is the prefix cache on? a cache hit skips the captured positions)")
        result.append(torch.log_softmax(out.logits[-len(seq):-1].float(), dim=-1))
    return result


def greedy_continuations(engine, prompts: list[list[int]], n: int, progress: bool = False) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in engine.generate(prompts, params, progress=progress)]


def compare_logprobs(reference: list[torch.Tensor], modified: list[torch.Tensor]) -> tuple[float, float, int]:
    """Each list: [N_i, V] log-probabilities. Returns (mean KL(ref || mod), top-1 agreement, positions)."""
    kl_sum, agree, n = 0.0, 0, 0
    for ref, mod in zip(reference, modified, strict=True):
        if ref.shape != mod.shape:
            raise ValueError(f"log-probability shapes differ: {tuple(ref.shape)} vs {tuple(mod.shape)}")
        kl = (ref.exp() * (ref - mod)).sum(-1).clamp_min(0)
        kl_sum += float(kl.sum())
        agree += int((ref.argmax(-1) == mod.argmax(-1)).sum())
        n += ref.shape[0]
    return kl_sum / n, agree / n, n


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class FidelityEvaluator:
    """Holds the reference engine's results on `data`, so many modified engines can be compared to it."""

    def __init__(self, reference_engine, data: FidelityData, progress: bool = False) -> None:
        self.data = data
        self.progress = progress
        self.reference_logprobs = teacher_forced_logprobs(reference_engine, data.sequences, progress)
        self.reference_greedy = (greedy_continuations(reference_engine, data.prompts, data.continuation_tokens,
                                                      progress) if data.prompts else [])

    def evaluate(self, engine) -> FidelityReport:
        kl, top1, n = compare_logprobs(self.reference_logprobs,
                                       teacher_forced_logprobs(engine, self.data.sequences, self.progress))
        match = 0.0
        if self.data.prompts:
            greedy = greedy_continuations(engine, self.data.prompts, self.data.continuation_tokens, self.progress)
            match = sum(common_prefix(a, b) for a, b in zip(self.reference_greedy, greedy, strict=True))
            match /= len(greedy)
        return FidelityReport(kl, top1, match, n, len(self.data.prompts), self.data.continuation_tokens)


def kv_cache_figures(engine) -> dict:
    """KV bytes per token (real page bytes, all layers, scales included) and mean nominal KV bits over
    layers and keys/values (16 = unquantized, whatever the dtype)."""
    specs = engine.kv_specs
    bs = engine.kv.block_size
    per_token = sum(s.page_bytes(bs) for s in specs) / bs

    def nominal(bits: int) -> int:
        return 16 if bits >= 16 else bits

    bits = sum(nominal(s.key_bits) + nominal(s.value_bits) for s in specs) / (2 * len(specs))
    return {"kv_bytes_per_token": per_token, "kv_bits_mean": bits}
