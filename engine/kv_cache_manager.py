"""Per-request block tables on top of the BlockPool: prefix matching, allocation for the tokens a
step will compute, registration of newly filled blocks in the prefix cache, freeing, and eviction of
single blocks (a block table may then have holes, marked HOLE)."""

from __future__ import annotations

from engine.block_pool import BlockHash, BlockPool
from engine.request import Request

HOLE = -1


class KVCacheManager:
    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size
        self._tables: dict[str, list[int]] = {}
        self._num_cached: dict[str, int] = {}  # leading blocks of the table already in the cache
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    # ---- prefix cache -------------------------------------------------------------------------
    def _update_hashes(self, request: Request) -> None:
        tokens = request.all_token_ids
        bs = self.block_size
        hashes = request.block_hashes
        while (len(hashes) + 1) * bs <= len(tokens):
            i = len(hashes)
            hashes.append(BlockHash.of(hashes[-1] if hashes else None, tuple(tokens[i * bs:(i + 1) * bs])))

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """Longest cached prefix of the request's tokens, as (block ids, number of tokens). At least
        one token is always left to compute, since the step must produce logits for it."""
        if not self.pool.enable_caching:
            return [], 0
        self._update_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for h in request.block_hashes[:max_blocks]:
            bid = self.pool.lookup(h)
            if bid is None:
                break
            hits.append(bid)
        return hits, len(hits) * self.block_size

    def record_lookup(self, num_queried: int, num_hit: int) -> None:
        self.prefix_cache_queries += num_queried
        self.prefix_cache_hits += num_hit

    # ---- allocation ---------------------------------------------------------------------------
    def num_blocks_needed(self, request: Request, num_new_tokens: int, num_computed_blocks: int = 0) -> int:
        table = self._tables.get(request.request_id, [])
        have = len(table) + num_computed_blocks
        total = request.num_computed_tokens + num_computed_blocks * self.block_size + num_new_tokens
        return max(0, -(-total // self.block_size) - have)

    def allocate_slots(self, request: Request, num_new_tokens: int, computed_blocks: list[int] | None = None) -> bool:
        """Reserves blocks so `num_new_tokens` more tokens fit after the computed ones. Returns False
        (changing nothing) when the pool cannot provide them."""
        computed_blocks = computed_blocks or []
        need = self.num_blocks_needed(request, num_new_tokens, len(computed_blocks))
        # idle cached blocks we are about to reuse leave the free queue, so they do not count as free
        idle_hits = sum(1 for b in computed_blocks if self.pool.blocks[b].ref_cnt == 0)
        if need > self.pool.num_free_blocks - idle_hits:
            return False
        table = self._tables.setdefault(request.request_id, [])
        if computed_blocks:
            self.pool.touch(computed_blocks)
            table.extend(computed_blocks)
            self._num_cached[request.request_id] = len(table)
        if need:
            table.extend(self.pool.allocate(need))
        return True

    def cache_blocks(self, request: Request) -> None:
        """Registers the request's blocks that became full (and computed) in the prefix cache."""
        if not self.pool.enable_caching:
            return
        rid = request.request_id
        table = self._tables.get(rid)
        if not table:
            return
        full = min(request.num_computed_tokens // self.block_size, len(table))
        start = self._num_cached.get(rid, 0)
        if full <= start:
            return
        self._update_hashes(request)
        full = min(full, len(request.block_hashes))
        for i in range(start, full):
            if table[i] != HOLE:
                self.pool.cache(table[i], request.block_hashes[i])
        self._num_cached[rid] = max(start, full)

    def free(self, request: Request) -> None:
        table = self._tables.pop(request.request_id, None)
        self._num_cached.pop(request.request_id, None)
        if table:
            self.pool.free([b for b in reversed(table) if b != HOLE])

    def evict_block(self, request: Request, index: int) -> None:
        """Frees one block of a running request, leaving a hole (used by KV-eviction plugins)."""
        table = self._tables[request.request_id]
        if table[index] != HOLE:
            self.pool.free([table[index]])
            table[index] = HOLE

    def block_table(self, request_id: str) -> list[int]:
        return self._tables.get(request_id, [])

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks
