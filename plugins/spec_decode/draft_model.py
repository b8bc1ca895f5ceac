"""A draft model sharing the target's tokenizer, with its own paged KV cache and one mirror sequence
per target request. Either a layer-skipping view of the target itself (same weight tensors, a subset
of its layers: no extra weight memory) or a separately loaded model (a smaller model, or the target in
a lower precision). Each proposal first catches the mirror up with the target's tokens (rejected
drafts are dropped by moving its computed length back to the common prefix), then runs k batched
single-token steps."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from engine.block_pool import BlockPool
from engine.kv_cache_manager import KVCacheManager
from engine.kv_spec import KVSpec
from engine.kv_storage import create_kv_storage
from engine.model_runner import ModelRunner
from engine.request import Request
from engine.scheduler import SchedulerOutput


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """'0-5,20,28-29' -> sorted layer indices, each in [0, num_layers)."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"draft layers must look like '0-5,20', got {spec!r}") from None
        if not 0 <= a <= b < num_layers:
            raise ValueError(f"draft layers {part!r} outside [0, {num_layers})")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError("draft layers select no layer")
    return sorted(out)


def evenly_kept_layers(num_layers: int, ratio: float) -> list[int]:
    """Keeps round(ratio * L) layers: the first and last always (they matter most), the rest evenly
    spaced between them."""
    if not 0 < ratio <= 1:
        raise ValueError(f"draft layer ratio must be in (0, 1], got {ratio}")
    keep = max(1, round(ratio * num_layers))
    if keep >= num_layers:
        return list(range(num_layers))
    if keep == 1:
        return [0]
    step = (num_layers - 1) / (keep - 1)
    return sorted({round(i * step) for i in range(keep)})


def layer_skip_view(model: nn.Module, keep: list[int]) -> nn.Module:
    """A model object that shares every module of `model` but runs only the layers in `keep`."""
    view = object.__new__(type(model))
    view.__dict__ = dict(model.__dict__)
    view._modules = dict(model._modules)
    view._modules["layers"] = nn.ModuleList([model.layers[i] for i in keep])
    return view


class DraftModel:
    def __init__(self, model: nn.Module, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"draft KV cache needs at least 2 blocks, got {num_blocks}")
        self.model = model
        spec = KVSpec.dense(num_kv_heads, head_dim, dtype)
        self.kv_storages = [create_kv_storage(spec, num_blocks, block_size, device) for _ in range(num_layers)]
        self.kv = KVCacheManager(BlockPool(num_blocks, False), block_size)
        self.runner = ModelRunner(model, self.kv_storages, self.kv, device)
        self._mirrors: dict[str, Request] = {}
        self._synced: dict[str, int] = {}  # target tokens the mirror is known to agree with

    def _sync(self, req: Request) -> Request:
        """The mirror of `req`, holding exactly the target's tokens, its computed length cut back to
        the prefix it shares with them."""
        tokens = req.all_token_ids
        mirror = self._mirrors.get(req.request_id)
        if mirror is None:
            mirror = Request(req.request_id, req.parent_id, 0, list(tokens), req.params)
            self._mirrors[req.request_id] = mirror
            self._synced[req.request_id] = len(tokens)
            return mirror
        old = mirror.prompt_token_ids
        common = self._synced[req.request_id]
        limit = min(len(old), len(tokens))
        while common < limit and old[common] == tokens[common]:
            common += 1
        mirror.prompt_token_ids = list(tokens)
        mirror.num_computed_tokens = min(mirror.num_computed_tokens, common)
        self._synced[req.request_id] = len(tokens)
        return mirror

    def draft(self, requests: list[Request], ks: dict[str, int],
              choose: Callable[[torch.Tensor, list[Request]], tuple[list[int], torch.Tensor]],
              ) -> dict[str, tuple[list[int], torch.Tensor]]:
        """Runs up to max(ks) draft steps. `choose(logits [B, V], target requests)` returns the draft
        token per row and the [B, V] distributions they were drawn from. Returns, per request id, its
        draft tokens and their [n, V] distributions."""
        mirrors = {req.request_id: (req, self._sync(req)) for req in requests if ks.get(req.request_id, 0) > 0}
        tokens: dict[str, list[int]] = {rid: [] for rid in mirrors}
        probs: dict[str, list[torch.Tensor]] = {rid: [] for rid in mirrors}
        live = dict(mirrors)
        while live:
            sched = SchedulerOutput()
            for rid, (_, mirror) in list(live.items()):
                n = mirror.num_tokens - mirror.num_computed_tokens
                if not self.kv.allocate_slots(mirror, n):
                    del live[rid]  # the draft cache is full: this request goes without drafts
                    continue
                sched.num_scheduled_tokens[rid] = n
                sched.requests[rid] = mirror
            if not live:
                break
            batch = self.runner.prepare(sched)
            result = self.runner.execute(batch)
            rows = [(live[m.request_id][0], row) for m, row, _ in batch.sample_rows]
            index = torch.tensor([row for _, row in rows], device=result.logits.device)
            picked, dist = choose(result.logits.index_select(0, index), [r for r, _ in rows])
            for j, (req, _) in enumerate(rows):
                rid = req.request_id
                mirror = live[rid][1]
                mirror.num_computed_tokens = mirror.num_tokens
                mirror.prompt_token_ids.append(picked[j])
                tokens[rid].append(picked[j])
                probs[rid].append(dist[j])
                if len(tokens[rid]) >= ks[rid]:
                    del live[rid]
        return {rid: (tokens[rid], torch.stack(probs[rid])) for rid in mirrors if tokens[rid]}

    def release(self, request_id: str) -> None:
        mirror = self._mirrors.pop(request_id, None)
        self._synced.pop(request_id, None)
        if mirror is not None:
            self.kv.free(mirror)
