"""Owns the KV blocks: free queue (LRU, so cached blocks are evicted oldest-first), reference counts,
and the hash -> block map of the prefix cache. A cache hit is verified against the token ids and the
parent hash, so a hash collision can never serve another prefix's KV."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockHash:
    value: int
    parent: int | None
    token_ids: tuple[int, ...]

    @classmethod
    def of(cls, parent: BlockHash | None, token_ids: tuple[int, ...]) -> BlockHash:
        parent_value = parent.value if parent is not None else None
        return cls(hash((parent_value, token_ids)), parent_value, token_ids)


@dataclass(slots=True)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("BlockPool needs at least one block")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[int, int] = {}  # hash value -> block id

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no user (cached-but-idle blocks count: they are evictable)."""
        return len(self._free)

    def lookup(self, block_hash: BlockHash) -> int | None:
        """Block id holding exactly this block (same parent chain value and tokens), or None."""
        if not self.enable_caching:
            return None
        bid = self._cached.get(block_hash.value)
        if bid is None:
            return None
        stored = self.blocks[bid].block_hash
        if stored is None or stored.parent != block_hash.parent or stored.token_ids != block_hash.token_ids:
            return None
        return bid

    def touch(self, block_ids: list[int]) -> None:
        """Takes a reference on cached blocks (removing idle ones from the free queue)."""
        for bid in block_ids:
            block = self.blocks[bid]
            if block.ref_cnt == 0:
                self._free.pop(bid, None)
            block.ref_cnt += 1

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {n}, {len(self._free)} free")
        out = []
        for _ in range(n):
            bid, _ = self._free.popitem(last=False)
            block = self.blocks[bid]
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
            out.append(bid)
        return out

    def free(self, block_ids: list[int]) -> None:
        """Drops one reference from each block; idle blocks go to the back of the free queue. Callers
        pass a request's blocks tail-first so its last blocks are evicted before its shared prefix."""
        for bid in block_ids:
            block = self.blocks[bid]
            if block.ref_cnt <= 0:
                raise RuntimeError(f"double free of KV block {bid}")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[bid] = None

    def cache(self, block_id: int, block_hash: BlockHash) -> None:
        if not self.enable_caching:
            return
        block = self.blocks[block_id]
        if block.block_hash is not None:
            return
        if block_hash.value in self._cached:
            return  # an identical block is already cached; this one stays private
        block.block_hash = block_hash
        self._cached[block_hash.value] = block_id

    def _evict(self, block: KVBlock) -> None:
        if self._cached.get(block.block_hash.value) == block.block_id:
            del self._cached[block.block_hash.value]
        block.block_hash = None

    def reset_prefix_cache(self) -> None:
        for block in self.blocks:
            if block.ref_cnt == 0 and block.block_hash is not None:
                self._evict(block)
