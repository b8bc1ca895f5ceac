"""BlockPool: allocation, reference counts, the LRU free queue and the verified prefix-cache map."""

from __future__ import annotations

import pytest

from engine.block_pool import BlockHash, BlockPool


def _chain(*blocks: tuple[int, ...]) -> list[BlockHash]:
    out: list[BlockHash] = []
    for toks in blocks:
        out.append(BlockHash.of(out[-1] if out else None, toks))
    return out


def test_needs_at_least_one_block():
    with pytest.raises(ValueError):
        BlockPool(0)


def test_allocate_takes_distinct_blocks_with_one_reference():
    pool = BlockPool(8)
    assert pool.num_free_blocks == 8
    a = pool.allocate(3)
    b = pool.allocate(2)
    assert len(a) == 3 and len(b) == 2
    assert len(set(a) | set(b)) == 5
    assert all(0 <= bid < 8 for bid in a + b)
    assert all(pool.blocks[bid].ref_cnt == 1 for bid in a + b)
    assert pool.num_free_blocks == 3


def test_allocate_more_than_free_raises_and_changes_nothing():
    pool = BlockPool(4)
    pool.allocate(3)
    with pytest.raises(RuntimeError):
        pool.allocate(2)
    assert pool.num_free_blocks == 1
    assert len(pool.allocate(1)) == 1
    assert pool.num_free_blocks == 0


def test_free_drops_one_reference_per_call():
    pool = BlockPool(4)
    (bid,) = pool.allocate(1)
    pool.touch([bid])  # a second user (prefix sharing)
    assert pool.blocks[bid].ref_cnt == 2
    pool.free([bid])
    assert pool.blocks[bid].ref_cnt == 1
    assert pool.num_free_blocks == 3, "a block with a user left must not be free"
    pool.free([bid])
    assert pool.blocks[bid].ref_cnt == 0
    assert pool.num_free_blocks == 4


def test_double_free_raises():
    pool = BlockPool(4)
    (bid,) = pool.allocate(1)
    pool.free([bid])
    with pytest.raises(RuntimeError, match="double free"):
        pool.free([bid])
    assert pool.num_free_blocks == 4
    with pytest.raises(RuntimeError):
        pool.free([2])  # never allocated


def test_free_queue_is_lru_in_free_order():
    pool = BlockPool(4)
    ids = pool.allocate(4)
    order = [ids[2], ids[0], ids[3], ids[1]]
    pool.free(order)
    assert pool.allocate(4) == order


def test_cached_idle_blocks_are_evicted_oldest_first_and_leave_the_map():
    pool = BlockPool(4)
    ids = pool.allocate(4)
    hashes = _chain((1, 2), (3, 4), (5, 6), (7, 8))
    for bid, h in zip(ids, hashes, strict=True):
        pool.cache(bid, h)
    assert [pool.lookup(h) for h in hashes] == ids
    # freed in this order: ids[3] is the least recently used, then ids[1], ids[0], ids[2]
    pool.free([ids[3], ids[1], ids[0], ids[2]])
    assert pool.num_free_blocks == 4, "idle cached blocks count as free (they are evictable)"
    assert [pool.lookup(h) for h in hashes] == ids, "freeing alone must not evict"

    (first,) = pool.allocate(1)
    assert first == ids[3]
    assert pool.lookup(hashes[3]) is None
    assert pool.blocks[first].block_hash is None
    assert [pool.lookup(h) for h in hashes[:3]] == ids[:3]

    (second,) = pool.allocate(1)
    assert second == ids[1]
    assert pool.lookup(hashes[1]) is None
    assert pool.lookup(hashes[0]) == ids[0] and pool.lookup(hashes[2]) == ids[2]


def test_touch_takes_an_idle_cached_block_out_of_the_free_queue():
    pool = BlockPool(3)
    ids = pool.allocate(3)
    h = _chain((9, 9))[0]
    pool.cache(ids[0], h)
    pool.free(ids)
    assert pool.num_free_blocks == 3
    hit = pool.lookup(h)
    assert hit == ids[0]
    pool.touch([hit])
    assert pool.blocks[hit].ref_cnt == 1
    assert pool.num_free_blocks == 2
    # the touched block is in use: allocation must never hand it out
    rest = pool.allocate(2)
    assert hit not in rest
    assert pool.lookup(h) == hit
    with pytest.raises(RuntimeError):
        pool.allocate(1)
    # released again, it goes to the back of the queue (most recently used)
    pool.free(rest)
    pool.free([hit])
    assert pool.allocate(3)[-1] == hit


def test_lookup_verifies_token_ids_against_a_forged_hash():
    pool = BlockPool(2)
    (bid,) = pool.allocate(1)
    real = BlockHash.of(None, (10, 11, 12, 13))
    pool.cache(bid, real)
    assert pool.lookup(real) == bid
    assert pool.lookup(BlockHash.of(None, (10, 11, 12, 13))) == bid  # equal content, new object
    forged = BlockHash(real.value, real.parent, (10, 11, 12, 14))  # collision: same value, other tokens
    assert pool.lookup(forged) is None


def test_lookup_verifies_the_parent():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    h0, h1 = _chain((1, 1), (2, 2))
    pool.cache(a, h0)
    pool.cache(b, h1)
    assert pool.lookup(h1) == b
    other_parent = BlockHash.of(None, (3, 3))
    forged = BlockHash(h1.value, other_parent.value, h1.token_ids)
    assert pool.lookup(forged) is None
    no_parent = BlockHash(h1.value, None, h1.token_ids)
    assert pool.lookup(no_parent) is None


def test_lookup_of_unknown_hash_misses():
    pool = BlockPool(2)
    assert pool.lookup(BlockHash.of(None, (1, 2))) is None


def test_duplicate_content_stays_private():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    h = BlockHash.of(None, (5, 6))
    pool.cache(a, h)
    pool.cache(b, BlockHash.of(None, (5, 6)))
    assert pool.lookup(h) == a
    assert pool.blocks[b].block_hash is None
    # evicting the private duplicate must not drop the cached original from the map
    pool.free([b])
    pool.allocate(3)  # takes the 2 never-used blocks and b
    assert pool.lookup(h) == a


def test_a_cached_block_keeps_its_first_hash():
    pool = BlockPool(2)
    (a,) = pool.allocate(1)
    h1, h2 = BlockHash.of(None, (1,)), BlockHash.of(None, (2,))
    pool.cache(a, h1)
    pool.cache(a, h2)
    assert pool.lookup(h1) == a
    assert pool.lookup(h2) is None


def test_caching_disabled():
    pool = BlockPool(4, enable_caching=False)
    (a,) = pool.allocate(1)
    h = BlockHash.of(None, (1, 2, 3))
    pool.cache(a, h)
    assert pool.blocks[a].block_hash is None
    assert pool.lookup(h) is None
    pool.free([a])
    assert pool.num_free_blocks == 4
    assert pool.lookup(h) is None


def test_reset_prefix_cache_drops_only_idle_blocks():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    ha, hb = BlockHash.of(None, (1,)), BlockHash.of(None, (2,))
    pool.cache(a, ha)
    pool.cache(b, hb)
    pool.free([a])
    pool.reset_prefix_cache()
    assert pool.lookup(ha) is None
    assert pool.lookup(hb) == b
    assert pool.num_free_blocks == 3
