"""End-to-end behaviours of LLMEngine on the default model: stop conditions, n / seed, logprobs,
abort, validation, prefix-cache counters and stats. Uses the shared session engine and leaves it idle."""

from __future__ import annotations

import random

import pytest

from engine.sampling_params import SamplingParams
from tests.engine.conftest import CHAT_PROMPTS


def _chat(engine, text: str) -> list[int]:
    return engine.tokenizer.tokenize_chat([{"role": "user", "content": text}])


def _free_all(engine) -> bool:
    st = engine.stats()
    return st.num_blocks_free == st.num_blocks_total and st.num_running == 0 and st.num_waiting == 0


@pytest.fixture(scope="module")
def engine(default_engine):
    yield default_engine
    assert not default_engine.has_unfinished_requests()


@pytest.fixture(scope="module")
def prompt(engine):
    return _chat(engine, CHAT_PROMPTS[0])


@pytest.fixture(scope="module")
def ref(engine, prompt):
    """Greedy reference continuation (token ids, text) of the first chat prompt."""
    (out,) = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    c = out.outputs[0]
    assert len(c.token_ids) == 10
    tok = engine.tokenizer
    text = tok.decode(c.token_ids)
    assert c.text == text
    assert len(tok.decode(c.token_ids[:6])) > 12, "the reference is too short to cut stop strings from"
    return c.token_ids, text


def _spanning_stop(engine, ids: list[int]) -> str:
    """A stop string that straddles the boundary between the 2nd and 3rd output tokens."""
    tok = engine.tokenizer
    p = len(tok.decode(ids[:2]))
    text = tok.decode(ids)
    stop = text[max(0, p - 3):p + 3]
    assert all(stop not in tok.decode([t]) for t in ids)
    return stop


@pytest.fixture(scope="module")
def batch(engine, prompt, ref):
    """One batch over the shared engine with many different sampling settings on the same prompt."""
    ids, text = ref
    stop = _spanning_stop(engine, ids)
    k = next(i for i, t in enumerate(ids) if i >= 3 and t not in ids[:i])  # a token not seen before
    late = text[-5:]
    assert text.find(late) > text.index(stop)
    params = {
        "stop": SamplingParams(temperature=0.0, max_tokens=10, stop=(stop,)),
        "stop_incl": SamplingParams(temperature=0.0, max_tokens=10, stop=(stop,), include_stop_str_in_output=True),
        "stop_multi": SamplingParams(temperature=0.0, max_tokens=10, stop=(late, stop)),
        "stop_tok": SamplingParams(temperature=0.0, max_tokens=10, stop_token_ids=(ids[k],)),
        "length": SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True),
        "logprobs": SamplingParams(temperature=0.0, max_tokens=4, logprobs=3, ignore_eos=True),
        "n3": SamplingParams(n=3, temperature=1.0, seed=1234, max_tokens=5, ignore_eos=True),
    }
    outs = engine.generate([prompt] * len(params), list(params.values()))
    assert _free_all(engine)
    return {"stop_str": stop, "stop_tok_index": k, "late_stop": late, **dict(zip(params, outs, strict=True))}


def test_stop_string_finishes_with_stop(engine, batch, ref):
    ids, text = ref
    stop = batch["stop_str"]
    c = batch["stop"].outputs[0]
    assert batch["stop"].finished
    assert c.finish_reason == "stop"
    assert c.stop_reason == stop
    assert c.text == text[:text.index(stop)]
    # generation stopped on the token that completed the stop string
    tok = engine.tokenizer
    completes = next(i for i in range(1, len(ids) + 1) if stop in tok.decode(ids[:i]))
    assert c.token_ids == ids[:completes]


def test_stop_string_can_be_kept_in_the_output(batch, ref):
    ids, text = ref
    stop = batch["stop_str"]
    c = batch["stop_incl"].outputs[0]
    assert (c.finish_reason, c.stop_reason) == ("stop", stop)
    assert c.text == text[:text.index(stop) + len(stop)]


def test_the_first_matching_stop_string_is_reported(batch, ref):
    _, text = ref
    c = batch["stop_multi"].outputs[0]
    assert (c.finish_reason, c.stop_reason) == ("stop", batch["stop_str"])
    assert c.text == text[:text.index(batch["stop_str"])]


def test_stop_token_id_finishes_with_stop(batch, ref):
    ids, _ = ref
    k = batch["stop_tok_index"]
    c = batch["stop_tok"].outputs[0]
    assert c.finish_reason == "stop"
    assert c.stop_reason == ids[k]
    assert c.token_ids == ids[:k + 1]


def test_max_tokens_finishes_with_length(batch, ref):
    ids, _ = ref
    c = batch["length"].outputs[0]
    assert c.finish_reason == "length"
    assert c.stop_reason is None
    assert c.token_ids == ids[:3]


def test_eos_finishes_with_stop_and_no_stop_reason(engine, prompt):
    (out,) = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=40))
    c = out.outputs[0]
    assert c.finish_reason == "stop", "the default model answers this prompt briefly"
    assert c.stop_reason is None
    assert c.token_ids[-1] in engine.eos_token_ids
    assert "Paris" in c.text


def test_logprobs_have_the_requested_alternatives(batch, ref):
    ids, _ = ref
    c = batch["logprobs"].outputs[0]
    assert c.token_ids == ids[:4]
    assert c.logprobs is not None and len(c.logprobs) == 4
    for tid, lp in zip(c.token_ids, c.logprobs, strict=True):
        assert lp.token_id == tid
        assert len(lp.top) == 3
        vals = [v for _, v in lp.top]
        assert vals == sorted(vals, reverse=True)
        assert len({t for t, _ in lp.top}) == 3
        assert lp.top[0][0] == tid, "greedy samples the most likely token"
        assert lp.logprob == pytest.approx(lp.top[0][1], abs=1e-6)
        assert all(v <= 0 for v in vals)
        assert sum(2.718281828459045 ** v for v in vals) <= 1 + 1e-5
    assert batch["stop"].outputs[0].logprobs is None


def test_n3_with_seed_gives_three_reproducible_samples(engine, prompt, batch):
    first = batch["n3"]
    assert [c.index for c in first.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 5 and c.finish_reason == "length" for c in first.outputs)
    samples = [tuple(c.token_ids) for c in first.outputs]
    assert len(set(samples)) > 1, "the three samples use different random streams"
    # same seed, another run (and another batch): the same three samples
    (again,) = engine.generate([prompt], SamplingParams(n=3, temperature=1.0, seed=1234, max_tokens=5,
                                                        ignore_eos=True))
    assert [tuple(c.token_ids) for c in again.outputs] == samples
    assert [c.text for c in again.outputs] == [c.text for c in first.outputs]
    assert _free_all(engine)


def test_abort_request_frees_all_blocks(engine, prompt):
    assert _free_all(engine)
    engine.add_request("to-abort", prompt, SamplingParams(n=2, temperature=0.0, max_tokens=50, ignore_eos=True))
    outputs = []
    for _ in range(2):
        outputs += engine.step()
    st = engine.stats()
    assert st.num_blocks_free < st.num_blocks_total
    assert st.num_running == 2
    assert outputs and not any(o.finished for o in outputs)
    out = engine.abort_request("to-abort")
    assert out is not None and out.finished
    assert [c.finish_reason for c in out.outputs] == ["abort", "abort"]
    assert not engine.has_unfinished_requests()
    assert _free_all(engine)
    assert engine.abort_request("to-abort") is None
    assert engine.step() == []


def test_validate_request_errors(engine):
    p = SamplingParams(max_tokens=5)
    with pytest.raises(ValueError, match="empty"):
        engine.validate_request([], p)
    vocab = engine.arch.vocab_size
    for bad in ([1, 2, vocab], [1, -1, 2], [vocab + 1000]):
        with pytest.raises(ValueError, match="vocabulary"):
            engine.validate_request(bad, p)
    n = 37
    max_tokens = engine.max_model_len - 20
    with pytest.raises(ValueError) as exc:
        engine.validate_request(list(range(100, 100 + n)), SamplingParams(max_tokens=max_tokens))
    msg = str(exc.value)
    assert str(n) in msg and str(max_tokens) in msg and str(engine.max_model_len) in msg
    with pytest.raises(ValueError, match=str(engine.max_model_len)):
        engine.validate_request([5] * engine.max_model_len, SamplingParams(max_tokens=None))
    with pytest.raises(ValueError):
        engine.add_request("bad", [], p)
    assert not engine.has_unfinished_requests()
    engine.validate_request(list(range(100, 100 + n)), SamplingParams(max_tokens=5))  # a valid one passes


def test_duplicate_request_id_is_rejected(engine, prompt):
    engine.add_request("dup", prompt, SamplingParams(max_tokens=1))
    try:
        with pytest.raises(ValueError, match="already in use"):
            engine.add_request("dup", prompt, SamplingParams(max_tokens=1))
    finally:
        engine.abort_request("dup")
    assert _free_all(engine)


def _unique_prefix(seed: int, n: int = 64) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 40000) for _ in range(n)]


def test_second_request_sharing_a_64_token_prefix_hits_the_cache(engine):
    prefix = _unique_prefix(101)
    first = prefix + [11, 12, 13, 14, 15]
    second = prefix + [21, 22, 23, 24, 25, 26]
    before = engine.stats()
    (o1,) = engine.generate([first], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    mid = engine.stats()
    assert o1.num_cached_tokens == 0
    assert mid.prefix_cache_hits == before.prefix_cache_hits
    assert mid.prefix_cache_queries - before.prefix_cache_queries == len(first)
    (o2,) = engine.generate([second], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    after = engine.stats()
    assert o2.num_cached_tokens == 64
    assert after.prefix_cache_hits - mid.prefix_cache_hits == 64
    assert after.prefix_cache_queries - mid.prefix_cache_queries == len(second)
    assert _free_all(engine)


def test_a_request_that_finishes_on_its_first_token_still_fills_the_prefix_cache(engine):
    """A prompt's blocks are registered in the prefix cache after the step that computed them, but
    only for requests that are not finished; a request that finishes on the token sampled in its
    prefill step (max_tokens=1, or an immediate EOS / stop) frees its blocks uncached."""
    prefix = _unique_prefix(202)
    (o1,) = engine.generate([prefix + [11, 12]], SamplingParams(temperature=0.0, max_tokens=1))
    assert len(o1.outputs[0].token_ids) == 1
    mid = engine.stats()
    (o2,) = engine.generate([prefix + [21, 22]], SamplingParams(temperature=0.0, max_tokens=1))
    after = engine.stats()
    assert _free_all(engine)
    assert after.prefix_cache_hits - mid.prefix_cache_hits == 64
    assert o2.num_cached_tokens == 64


def test_stats_count_prompt_and_generation_tokens(engine):
    prompts = [_chat(engine, CHAT_PROMPTS[i]) for i in (1, 2)]
    params = [SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)]
    before = engine.stats()
    outs = engine.generate(prompts, params)
    after = engine.stats()
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 4]
    assert after.prompt_tokens_total - before.prompt_tokens_total == len(prompts[0]) + len(prompts[1])
    assert after.generation_tokens_total - before.generation_tokens_total == 7
    assert after.num_steps - before.num_steps >= 4
    assert after.last_step_time is not None and after.last_step_time > (before.last_step_time or 0)
    assert after.num_running == after.num_waiting == 0
    assert after.kv_cache_usage == 0.0
