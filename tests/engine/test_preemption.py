"""Criterion: preemption loses nothing. With a KV pool too small for all requests at once, every
request completes with the same greedy output as with a large pool."""

from __future__ import annotations

from engine.sampling_params import SamplingParams
from tests.engine.conftest import CHAT_PROMPTS, make_engine


def test_small_pool_preempts_and_matches_large_pool(default_model_dir):
    big = make_engine(max_num_seqs=16)
    tok = big.tokenizer
    prompts = [tok.tokenize_chat([{"role": "user", "content": p}]) for p in CHAT_PROMPTS[:10]]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    expected = [o.outputs[0].token_ids for o in big.generate(prompts, params)]
    assert big.stats().num_preemptions == 0
    del big

    # every request needs ~5 blocks of 16 tokens by the end; 16 blocks hold about three of them
    small = make_engine(max_num_seqs=16, num_blocks=16)
    outs = small.generate(prompts, params)
    stats = small.stats()
    assert stats.num_preemptions > 0, "the pool was meant to be too small"
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    assert stats.num_blocks_free == stats.num_blocks_total
