"""Scheduler over a real KVCacheManager + BlockPool, without a model. A step is simulated as the
engine does it: schedule(), advance(out), append a token to every request that has computed all of
its tokens (it produced logits for a new one), then cache_blocks(out)."""

from __future__ import annotations

import random

from engine.block_pool import BlockPool
from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

BS = 4


def _sched(num_blocks: int = 64, budget: int = 64, max_seqs: int = 16, chunked: bool = True,
           caching: bool = True) -> Scheduler:
    kv = KVCacheManager(BlockPool(num_blocks, enable_caching=caching), BS)
    cfg = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, enable_chunked_prefill=chunked)
    return Scheduler(cfg, kv, max_model_len=4096)


def _req(rid: str, prompt_len: int, max_tokens: int = 1000, base: int = 0) -> Request:
    return Request(rid, rid, 0, [base + i for i in range(prompt_len)], SamplingParams(max_tokens=max_tokens))


def _step(s: Scheduler, token: int = 3):
    out = s.schedule()
    s.advance(out)
    for req in out.requests.values():
        if not req.is_finished and req.num_computed_tokens == req.num_tokens:
            req.output_token_ids.append(token)
            if req.num_output_tokens >= req.params.max_tokens:
                s.finish(req, "length")
    s.cache_blocks(out)
    return out


def _blocks_in_use(s: Scheduler) -> int:
    return sum(1 for b in s.kv.pool.blocks if b.ref_cnt > 0)


def test_token_budget_is_shared_by_decodes_and_prefills():
    s = _sched(budget=16)
    a, b, c = _req("a", 10), _req("b", 10, base=100), _req("c", 10, base=200)
    for r in (a, b, c):
        s.add(r)
    out = _step(s)
    assert out.num_scheduled_tokens == {"a": 10, "b": 6}
    assert list(s.waiting) == [c]
    out = _step(s)
    # a decodes 1, b finishes its prefill (4), c gets the rest of the budget (all 10 of its prompt)
    assert out.num_scheduled_tokens == {"a": 1, "b": 4, "c": 10}
    out = _step(s)
    assert out.num_scheduled_tokens == {"a": 1, "b": 1, "c": 1}


def test_token_budget_holds_under_a_random_load():
    rng = random.Random(1234)
    budget = 24
    s = _sched(num_blocks=256, budget=budget, max_seqs=8)
    reqs = [_req(f"r{i}", rng.randint(1, 60), max_tokens=rng.randint(1, 12), base=1000 * i) for i in range(30)]
    pending = list(reqs)
    for _ in range(400):
        if pending and rng.random() < 0.5:
            s.add(pending.pop(0))
        before = {r.request_id: r.num_tokens - r.num_computed_tokens for r in reqs}
        out = _step(s)
        assert out.total_tokens <= budget
        assert len(s.running) <= 8
        for rid, n in out.num_scheduled_tokens.items():
            assert 1 <= n <= before[rid]
        if not pending and not s.num_unfinished:
            break
    assert not pending and s.num_unfinished == 0
    assert all(r.finish_reason == "length" and r.num_output_tokens == r.params.max_tokens for r in reqs)
    assert s.kv.num_free_blocks == s.kv.num_blocks


def test_chunked_prefill_splits_a_long_prompt():
    s = _sched(budget=8, max_seqs=8)
    r = _req("long", 30)
    s.add(r)
    chunks = []
    while r.num_output_tokens == 0:
        out = _step(s)
        chunks.append(out.num_scheduled_tokens["long"])
        assert r.num_computed_tokens == sum(chunks)
        # blocks are reserved for the computed tokens only, not for the whole prompt up front
        assert len(s.kv.block_table("long")) == -(-sum(chunks) // BS)
    assert chunks == [8, 8, 8, 6]
    assert _step(s).num_scheduled_tokens == {"long": 1}


def test_without_chunked_prefill_a_prompt_waits_for_the_whole_budget():
    s = _sched(budget=16, chunked=False)
    a, b = _req("a", 10), _req("b", 10, base=100)
    s.add(a)
    s.add(b)
    out = _step(s)
    assert out.num_scheduled_tokens == {"a": 10}
    out = _step(s)
    assert out.num_scheduled_tokens == {"a": 1, "b": 10}


def test_max_num_seqs_limits_the_running_set():
    s = _sched(budget=64, max_seqs=2)
    reqs = [_req(f"r{i}", 5, max_tokens=2, base=100 * i) for i in range(5)]
    for r in reqs:
        s.add(r)
    out = _step(s)
    assert list(out.num_scheduled_tokens) == ["r0", "r1"]
    assert [r.request_id for r in s.running] == ["r0", "r1"]
    assert [r.request_id for r in s.waiting] == ["r2", "r3", "r4"]
    out = _step(s)  # r0 and r1 decode their second (last) token and finish
    assert list(out.num_scheduled_tokens) == ["r0", "r1"]
    assert reqs[0].is_finished and reqs[1].is_finished
    out = _step(s)
    assert list(out.num_scheduled_tokens) == ["r2", "r3"]
    assert len(s.running) == 2


def test_admission_is_first_come_first_served():
    s = _sched(budget=64)
    reqs = [_req(f"r{i}", 3, base=100 * i) for i in (3, 0, 2, 1)]
    for r in reqs:
        s.add(r)
    out = _step(s)
    assert list(out.num_scheduled_tokens) == ["r3", "r0", "r2", "r1"]
    assert [r.request_id for r in s.running] == ["r3", "r0", "r2", "r1"]
    late = _req("late", 3, base=999)
    s.add(late)
    out = _step(s)
    assert list(out.num_scheduled_tokens) == ["r3", "r0", "r2", "r1", "late"]


def test_a_later_small_request_does_not_jump_a_head_that_does_not_fit():
    s = _sched(num_blocks=4, budget=64)
    big = _req("big", 20)  # 5 blocks: can never fit right now
    small = _req("small", 2, base=100)
    s.add(big)
    s.add(small)
    out = _step(s)
    assert out.is_empty()
    assert list(s.waiting) == [big, small]
    assert s.kv.num_free_blocks == 4


def _run_until_preemption(s: Scheduler, limit: int = 50):
    for _ in range(limit):
        running_before = list(s.running)
        outputs_before = {r.request_id: list(r.output_token_ids) for r in running_before}
        free_before = s.kv.num_free_blocks
        out = _step(s)
        if out.preempted_ids:
            return out, running_before, outputs_before, free_before
    raise AssertionError("no preemption happened")


def test_preemption_evicts_the_newest_running_request():
    # 4 blocks of 4 tokens; a grows to 12 tokens and b to 10 (3 blocks each): they cannot both fit
    budget = 4
    s = _sched(num_blocks=4, budget=budget, max_seqs=2, caching=False)
    a, b, c = _req("a", 4, max_tokens=8), _req("b", 4, max_tokens=6, base=100), _req("c", 2, max_tokens=2, base=200)
    for r in (a, b, c):
        s.add(r)

    out, running_before, outputs_before, _ = _run_until_preemption(s)
    assert running_before == [a, b]
    assert out.preempted_ids == ["b"], "the newest running request is the victim"
    assert b.status == RequestStatus.PREEMPTED
    assert b.num_computed_tokens == 0
    assert s.kv.block_table("b") == []
    assert b.output_token_ids == outputs_before["b"] and b.output_token_ids, "generated tokens are kept"
    assert b.num_preemptions == 1 and s.num_preemptions == 1
    assert a.num_preemptions == 0
    assert list(s.waiting) == [b, c], "the victim goes to the head of the queue"
    assert s.running == [a]
    # its blocks went back to the pool: only a holds blocks now
    assert _blocks_in_use(s) == len(s.kv.block_table("a"))
    assert s.kv.num_free_blocks == 4 - len(s.kv.block_table("a"))

    # no admission in a step that preempted, although the victim's first chunk would have fit
    assert out.num_scheduled_tokens == {"a": 1}
    budget_left = budget - out.total_tokens
    assert s.kv.num_blocks_needed(b, min(b.num_tokens, budget_left)) <= s.kv.num_free_blocks

    # the victim comes back first and recomputes prompt + kept output from scratch
    out = _step(s)
    assert "c" not in out.num_scheduled_tokens
    assert out.num_scheduled_tokens["b"] == min(b.num_tokens, budget - out.num_scheduled_tokens.get("a", 0))
    assert b.status == RequestStatus.RUNNING

    for _ in range(100):
        if not s.num_unfinished:
            break
        _step(s)
    assert s.num_unfinished == 0
    assert all(r.finish_reason == "length" for r in (a, b, c))
    assert (a.num_output_tokens, b.num_output_tokens, c.num_output_tokens) == (8, 6, 2), "output generated before the preemption still counts"
    assert s.kv.num_free_blocks == 4
    assert _blocks_in_use(s) == 0


def test_the_victim_is_the_newest_not_the_neighbour():
    s = _sched(num_blocks=3, budget=64, caching=False)
    a, b, c = _req("a", 4), _req("b", 2, base=100), _req("c", 2, base=200)
    for r in (a, b, c):
        s.add(r)
    out = _step(s)
    assert out.num_scheduled_tokens == {"a": 4, "b": 2, "c": 2}
    assert s.kv.num_free_blocks == 0
    c_block = s.kv.block_table("c")[0]
    out = _step(s)  # a's 5th token needs a second block
    assert out.preempted_ids == ["c"]
    assert out.num_scheduled_tokens == {"a": 1, "b": 1}
    assert s.running == [a, b]
    assert s.kv.block_table("a")[1] == c_block, "a grows into the victim's freed block"
    assert list(s.waiting) == [c]


def test_prefix_lookups_are_counted_once_per_request_despite_preemption():
    s = _sched(num_blocks=4, budget=4, max_seqs=2, caching=True)
    a, b = _req("a", 4, max_tokens=6), _req("b", 4, max_tokens=6, base=100)
    s.add(a)
    s.add(b)
    for _ in range(100):
        if not s.num_unfinished:
            break
        _step(s)
    assert s.num_unfinished == 0
    assert s.num_preemptions >= 1
    assert s.kv.prefix_cache_queries == 8
    assert s.kv.prefix_cache_hits == 0


def test_prefix_hits_are_counted_on_admission():
    s = _sched(budget=64)
    first = _req("first", 10, max_tokens=2)
    s.add(first)
    _step(s)
    _step(s)
    assert first.is_finished
    second = _req("second", 10, max_tokens=1)  # same 10 prompt tokens: 2 full blocks hit
    s.add(second)
    out = _step(s)
    assert out.num_scheduled_tokens == {"second": 2}
    assert second.num_cached_tokens == 8
    assert (s.kv.prefix_cache_queries, s.kv.prefix_cache_hits) == (20, 8)


def test_finish_frees_blocks_of_running_and_waiting_requests():
    s = _sched(num_blocks=8, budget=64, max_seqs=1)
    a, b = _req("a", 10), _req("b", 3, base=100)
    s.add(a)
    s.add(b)
    _step(s)
    assert s.kv.num_free_blocks == 8 - 3
    s.finish(a, "abort")
    assert a.is_finished and a.finish_reason == "abort"
    assert a not in s.running
    assert s.kv.block_table("a") == []
    assert s.kv.num_free_blocks == 8
    s.finish(a, "stop")  # a second finish changes nothing
    assert a.finish_reason == "abort"
    assert s.kv.num_free_blocks == 8

    s.finish(b, "abort", "why")
    assert b.stop_reason == "why"
    assert not s.waiting
    assert s.num_unfinished == 0
    assert s.schedule().is_empty()


def test_finished_requests_are_not_advanced():
    s = _sched(budget=64)
    a = _req("a", 5)
    s.add(a)
    out = s.schedule()
    s.finish(a, "abort")
    s.advance(out)
    assert a.num_computed_tokens == 0
    s.cache_blocks(out)
    assert s.kv.num_free_blocks == s.kv.num_blocks
