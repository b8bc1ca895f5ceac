"""KVCacheManager: prefix matching, slot allocation, caching of filled blocks, freeing, holes."""

from __future__ import annotations

import pytest

from engine.block_pool import BlockPool
from engine.kv_cache_manager import HOLE, KVCacheManager
from engine.request import Request
from engine.sampling_params import SamplingParams

BS = 4


def _req(rid: str, prompt: list[int], output: list[int] | None = None) -> Request:
    r = Request(rid, rid, 0, list(prompt), SamplingParams(max_tokens=64))
    r.output_token_ids = list(output or [])
    return r


def _mgr(num_blocks: int = 16, caching: bool = True) -> KVCacheManager:
    return KVCacheManager(BlockPool(num_blocks, enable_caching=caching), BS)


def _compute_all(kv: KVCacheManager, req: Request, computed: list[int] | None = None, num_cached: int = 0) -> None:
    """Admits the request with its whole remaining prompt, marks it computed and caches its blocks."""
    assert kv.allocate_slots(req, req.num_tokens - num_cached, computed)
    req.num_computed_tokens = req.num_tokens
    kv.cache_blocks(req)


def test_allocate_slots_reserves_ceil_tokens_over_block_size():
    kv = _mgr(16)
    req = _req("a", list(range(10)))  # 10 tokens -> 3 blocks of 4
    assert kv.allocate_slots(req, 10)
    table = list(kv.block_table("a"))
    assert len(table) == 3 and len(set(table)) == 3
    assert kv.num_free_blocks == 13
    req.num_computed_tokens = 10
    # 11th and 12th tokens fit in the 3rd block, the 13th needs a 4th
    assert kv.num_blocks_needed(req, 2) == 0
    assert kv.allocate_slots(req, 2)
    assert len(kv.block_table("a")) == 3
    assert kv.num_blocks_needed(req, 3) == 1
    assert kv.allocate_slots(req, 3)
    assert len(kv.block_table("a")) == 4
    assert kv.block_table("a")[:3] == table


def test_prefix_match_covers_full_blocks_only():
    kv = _mgr(16)
    first = _req("a", list(range(100, 110)))  # 2 full blocks + 2 tokens
    _compute_all(kv, first)
    second = _req("b", list(range(100, 110)) + [7, 8, 9])
    blocks, n = kv.get_computed_blocks(second)
    assert n == 8
    assert blocks == kv.block_table("a")[:2]


def test_prefix_match_stops_at_the_first_differing_block():
    kv = _mgr(16)
    first = _req("a", list(range(12)) + [50])
    _compute_all(kv, first)
    prompt = list(range(12)) + [50]
    prompt[5] = 99  # second block differs
    blocks, n = kv.get_computed_blocks(_req("b", prompt))
    assert n == 4 and blocks == kv.block_table("a")[:1]
    # a later block that matches on its own tokens but not on its parent chain is not a hit
    prompt = [99] + list(range(1, 12)) + [50]
    assert kv.get_computed_blocks(_req("c", prompt)) == ([], 0)


def test_prefix_match_never_covers_the_whole_prompt():
    kv = _mgr(16)
    prompt = list(range(200, 212))  # exactly 3 full blocks
    _compute_all(kv, _req("a", prompt))
    blocks, n = kv.get_computed_blocks(_req("b", prompt))
    assert n == 8, "the last block must be recomputed so the step has a token to produce logits for"
    assert blocks == kv.block_table("a")[:2]
    assert n < len(prompt)
    # one more token: all three cached blocks can be used
    blocks, n = kv.get_computed_blocks(_req("c", prompt + [1]))
    assert n == 12 and blocks == kv.block_table("a")


def test_no_prefix_match_before_blocks_are_computed():
    kv = _mgr(16)
    first = _req("a", list(range(12)) + [1])
    assert kv.allocate_slots(first, first.num_tokens)
    kv.cache_blocks(first)  # nothing computed yet
    assert kv.get_computed_blocks(_req("b", list(range(12)) + [1])) == ([], 0)
    first.num_computed_tokens = 6  # one full block computed
    kv.cache_blocks(first)
    blocks, n = kv.get_computed_blocks(_req("c", list(range(12)) + [1]))
    assert n == 4 and blocks == kv.block_table("a")[:1]
    first.num_computed_tokens = first.num_tokens
    kv.cache_blocks(first)
    blocks, n = kv.get_computed_blocks(_req("d", list(range(12)) + [1]))
    assert n == 12 and blocks == kv.block_table("a")[:3]


def test_output_tokens_are_part_of_the_prefix():
    kv = _mgr(16)
    req = _req("a", [1, 2, 3, 4, 5, 6], output=[7, 8, 9])
    _compute_all(kv, req)
    blocks, n = kv.get_computed_blocks(_req("b", [1, 2, 3, 4, 5, 6, 7, 8, 0]))
    assert n == 8 and blocks == kv.block_table("a")[:2]


def test_caching_disabled_never_matches():
    kv = _mgr(16, caching=False)
    _compute_all(kv, _req("a", list(range(13))))
    assert kv.get_computed_blocks(_req("b", list(range(13)))) == ([], 0)


def test_allocate_slots_with_hits_shares_blocks():
    kv = _mgr(16)
    a = _req("a", list(range(9)))
    _compute_all(kv, a)
    free_before = kv.num_free_blocks
    b = _req("b", list(range(8)) + [42, 43])
    blocks, n = kv.get_computed_blocks(b)
    assert n == 8
    assert kv.allocate_slots(b, b.num_tokens - n, blocks)
    table = kv.block_table("b")
    assert table[:2] == kv.block_table("a")[:2]
    assert len(table) == 3
    assert kv.num_free_blocks == free_before - 1
    assert all(kv.pool.blocks[bid].ref_cnt == 2 for bid in blocks)


def test_allocate_slots_out_of_blocks_returns_false_and_changes_nothing():
    kv = _mgr(4)
    a = _req("a", list(range(8)))
    assert kv.allocate_slots(a, 8)  # 2 blocks
    b = _req("b", list(range(100, 112)))  # needs 3, only 2 left
    ref_before = [blk.ref_cnt for blk in kv.pool.blocks]
    assert kv.allocate_slots(b, 12) is False
    assert kv.block_table("b") == []
    assert kv.num_free_blocks == 2
    assert [blk.ref_cnt for blk in kv.pool.blocks] == ref_before
    # growing a running request past the pool fails the same way and keeps its table
    a.num_computed_tokens = 8
    table = list(kv.block_table("a"))
    assert kv.allocate_slots(a, 13) is False
    assert kv.block_table("a") == table
    assert kv.num_free_blocks == 2
    assert kv.allocate_slots(a, 8)
    assert len(kv.block_table("a")) == 4 and kv.num_free_blocks == 0


def test_failed_allocation_with_hits_does_not_touch_the_hits():
    kv = _mgr(4)
    a = _req("a", list(range(9)))
    _compute_all(kv, a)  # 3 blocks, 2 of them cached
    kv.free(a)
    hog = _req("hog", [1])
    assert kv.allocate_slots(hog, 1)  # takes the one never-used block
    b = _req("b", list(range(8)) + list(range(50, 60)))  # 2 hits + needs 3 more blocks
    blocks, n = kv.get_computed_blocks(b)
    assert n == 8
    assert kv.allocate_slots(b, b.num_tokens - n, blocks) is False
    assert all(kv.pool.blocks[bid].ref_cnt == 0 for bid in blocks)
    assert kv.num_free_blocks == 3
    assert kv.block_table("b") == []


def test_idle_cached_hits_are_not_counted_as_free():
    kv = _mgr(6)
    a = _req("a", list(range(9)))  # 3 blocks, the first 2 full and cached
    _compute_all(kv, a)
    kv.free(a)
    assert kv.num_free_blocks == 6  # the 2 cached blocks are idle, i.e. in the free queue

    # 2 idle hits + 4 new blocks: the hits leave the free queue, so only 4 blocks remain for new ones
    too_big = _req("b", list(range(8)) + list(range(100, 116)) + [1])  # 25 tokens -> 7 blocks
    blocks, n = kv.get_computed_blocks(too_big)
    assert n == 8 and len(blocks) == 2
    assert kv.num_blocks_needed(too_big, too_big.num_tokens - n, len(blocks)) == 5
    assert kv.allocate_slots(too_big, too_big.num_tokens - n, blocks) is False
    assert kv.num_free_blocks == 6

    fits = _req("c", list(range(8)) + list(range(100, 116)))  # 24 tokens -> 6 blocks: 2 hits + 4 new
    blocks, n = kv.get_computed_blocks(fits)
    assert n == 8
    assert kv.allocate_slots(fits, fits.num_tokens - n, blocks)
    assert kv.num_free_blocks == 0
    assert len(set(kv.block_table("c"))) == 6


def test_free_returns_all_blocks_and_keeps_them_cached():
    kv = _mgr(8)
    a = _req("a", list(range(10)))
    _compute_all(kv, a)
    assert kv.num_free_blocks == 5
    kv.free(a)
    assert kv.num_free_blocks == 8
    assert kv.block_table("a") == []
    assert all(blk.ref_cnt == 0 for blk in kv.pool.blocks)
    blocks, n = kv.get_computed_blocks(_req("b", list(range(10))))
    assert n == 8 and len(blocks) == 2
    kv.free(a)  # freeing twice is a no-op for the manager (the table is gone)
    assert kv.num_free_blocks == 8


def test_free_of_shared_blocks_keeps_the_other_users():
    kv = _mgr(8)
    a = _req("a", list(range(9)))
    _compute_all(kv, a)
    b = _req("b", list(range(8)) + [77])
    blocks, n = kv.get_computed_blocks(b)
    _compute_all(kv, b, blocks, n)
    kv.free(a)
    assert all(kv.pool.blocks[bid].ref_cnt == 1 for bid in blocks)
    assert kv.num_free_blocks == 8 - 3
    kv.free(b)
    assert kv.num_free_blocks == 8


def test_free_releases_the_tail_first():
    """The request's last blocks become the least recently used, so they are evicted first and the
    shared prefix survives longest."""
    kv = _mgr(3)
    a = _req("a", list(range(12)) + [1])
    assert kv.allocate_slots(a, 12)
    table = list(kv.block_table("a"))
    kv.free(a)
    assert kv.pool.allocate(3) == list(reversed(table))


def test_evict_block_leaves_a_hole_and_frees_the_block():
    kv = _mgr(8)
    a = _req("a", list(range(14)))
    _compute_all(kv, a)  # 4 blocks
    table = list(kv.block_table("a"))
    free_before = kv.num_free_blocks
    kv.evict_block(a, 1)
    assert kv.block_table("a") == [table[0], HOLE, table[2], table[3]]
    assert kv.pool.blocks[table[1]].ref_cnt == 0
    assert kv.num_free_blocks == free_before + 1
    kv.evict_block(a, 1)  # evicting a hole again is a no-op, not a double free
    assert kv.num_free_blocks == free_before + 1
    # the table keeps its length, so the request still needs no new block for what it has
    a_tokens = a.num_tokens
    assert kv.num_blocks_needed(a, 16 - a_tokens) == 0
    kv.free(a)  # holes are skipped
    assert kv.num_free_blocks == 8
    assert all(blk.ref_cnt == 0 for blk in kv.pool.blocks)


def test_cache_blocks_skips_holes():
    kv = _mgr(8)
    a = _req("a", list(range(13)))
    assert kv.allocate_slots(a, 13)
    kv.evict_block(a, 0)
    a.num_computed_tokens = 13
    kv.cache_blocks(a)
    table = kv.block_table("a")
    assert table[0] == HOLE
    assert kv.pool.lookup(a.block_hashes[0]) is None
    assert kv.pool.lookup(a.block_hashes[1]) == table[1]


def test_prefix_cache_counters_accumulate():
    kv = _mgr(8)
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (0, 0)
    kv.record_lookup(20, 8)
    kv.record_lookup(5, 0)
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (25, 8)


@pytest.mark.parametrize(("num_tokens", "expected_hit"), [(1, 0), (4, 0), (5, 4), (8, 4), (9, 8)])
def test_hits_leave_at_least_one_token(num_tokens, expected_hit):
    kv = _mgr(8)
    _compute_all(kv, _req("a", list(range(12)) + [0]))  # 3 cached blocks
    blocks, n = kv.get_computed_blocks(_req("b", list(range(num_tokens))))
    assert n == expected_hit
    assert len(blocks) == expected_hit // BS
