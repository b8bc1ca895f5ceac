"""Criterion: batching is invisible. 32 mixed-length requests run together (chunked prefill, prefix-cache
hits) give, per request, teacher-forced logits within 1e-4 max abs of the same request run alone."""

from __future__ import annotations

import random

import torch

from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine

GEN = 6


def _prompts(tokenizer, n=32, seed=0):
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [t for t in range(200, 20000) if t not in special]
    shared = [rng.choice(vocab) for _ in range(80)]  # 5 full blocks shared by half the requests
    prompts = []
    for i in range(n):
        body = [rng.choice(vocab) for _ in range(rng.randint(3, 150))]
        prompts.append(shared + body if i % 2 else body)
    return prompts


def test_batched_logits_match_alone(default_model_dir):
    capture = SamplingParams(temperature=0.0, max_tokens=GEN, ignore_eos=True, extra={"return_logits": True})
    batched_engine = make_engine(max_num_seqs=32, max_num_batched_tokens=96)
    prompts = _prompts(batched_engine.tokenizer)
    batched = batched_engine.generate(prompts, capture)
    stats = batched_engine.stats()
    assert stats.prefix_cache_hits > 0, "the workload must exercise prefix-cache hits"
    assert max(len(p) for p in prompts) > 96, "the workload must exercise chunked prefill"
    del batched_engine

    alone_engine = make_engine(max_num_seqs=1, max_num_batched_tokens=512, prefix_caching=False)
    worst = 0.0
    for prompt, out in zip(prompts, batched, strict=True):
        generated = out.outputs[0].token_ids
        assert len(generated) == GEN
        # teacher forcing: the same tokens fed as one prompt to a batch of one
        full = prompt + generated[:-1]
        (ref,) = alone_engine.generate([full], SamplingParams(temperature=0.0, max_tokens=1,
                                                              extra={"return_logits": True}))
        # positions served from the prefix cache were not recomputed, so their rows are absent
        skip = out.num_cached_tokens
        got = out.logits
        assert got.shape == (len(full) - skip, alone_engine.arch.vocab_size)
        assert ref.logits.shape == (len(full), alone_engine.arch.vocab_size)
        worst = max(worst, (got - ref.logits[skip:]).abs().max().item())
        assert torch.equal(got[len(prompt) - 1 - skip:].argmax(-1), torch.tensor(generated))
    print(f"max abs logit difference batched vs alone: {worst:.2e}")
    assert worst < 1e-4, f"max abs logit difference batched vs alone: {worst:.2e}"
