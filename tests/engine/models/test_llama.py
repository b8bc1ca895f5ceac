from __future__ import annotations

import torch

from engine.attention_metadata import AttentionMetadata, PrefillSpan
from tests.engine.conftest import make_engine


def test_forward_on_kept_rows_is_bit_identical_to_the_full_pass():
    eng = make_engine("synthetic:tiny")
    model, storages, bs = eng.runner.model, eng.kv_storages, eng.runner.block_size
    t = 3 * bs + 5  # several blocks, the last one partial
    blocks = torch.arange(-(-t // bs), dtype=torch.long)
    meta = AttentionMetadata(bs, torch.arange(t, dtype=torch.long))
    meta.prefills = [PrefillSpan(0, t, t, blocks)]
    ids = torch.randint(100, 40000, (t,), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(t, dtype=torch.long)
    rows = torch.tensor([5, 0, t - 1], dtype=torch.long)
    with torch.inference_mode():
        full = model(ids, pos, storages, meta)
        kept = model(ids, pos, storages, meta, rows)
    assert full.shape == (t, eng.arch.hidden_size) and kept.shape == (3, eng.arch.hidden_size)
    assert torch.equal(kept, full.index_select(0, rows))
