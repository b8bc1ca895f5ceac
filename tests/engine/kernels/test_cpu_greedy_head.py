"""The int8 greedy head's screen on its own (its tokens against the full logits' argmax are in
test_kernels.py's kernel-against-reference matrix)."""

from __future__ import annotations

import pytest
import torch

from engine.kernels.registry import get_kernel
from tests.engine.kernels.cases import greedy_head_cases


def test_greedy_head_screen_settles_ordinary_rows_and_hands_back_the_rest():
    """The int8 screen must decide ordinary rows itself (else it saves nothing) and hand back (-1) the rows
    it cannot decide cheaply: non-finite hidden states and rows with more candidates than its cap."""
    from engine.kernels import cpu_greedy_head

    if not cpu_greedy_head.available():
        pytest.skip("the AVX-512 VNNI greedy head cannot be built here")
    (_, w, h), _, (_, big, flat) = greedy_head_cases()
    head = get_kernel("pack_linear", "cpu")(w, None)
    module = cpu_greedy_head.GreedyHead(w, head)
    ext = cpu_greedy_head._EXT.load()
    raw = ext.greedy_tokens(h, module.packed, head.packed, w, module.stats, 8, 64)
    handed_back = set((raw < 0).nonzero().flatten().tolist())
    assert {6, 7} <= handed_back  # NaN, inf
    assert 5 in handed_back  # all logits equal: over a cap of 64 candidates
    assert len(handed_back) <= 4, f"the screen settled too few rows: {sorted(handed_back)}"
    want = head(h).argmax(-1)
    settled = [i for i in range(h.shape[0]) if i not in handed_back]
    assert torch.equal(raw[settled], want[settled])
    big_head = get_kernel("pack_linear", "cpu")(big, None)
    big_module = cpu_greedy_head.GreedyHead(big, big_head)
    raw = ext.greedy_tokens(flat, big_module.packed, big_head.packed, big, big_module.stats, 8,
                            cpu_greedy_head.MAX_CANDIDATES)
    assert bool((raw < 0).all()), "rows with every token a candidate must take the full head"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_greedy_head_refuses_a_weight_with_a_non_finite_entry_past_the_first_slice(bad):
    """The finiteness check runs slice by slice (a whole-tensor isfinite held 170 MB of temporaries at load):
    a non-finite value in the last, partial slice must still keep the int8 screen off, since its error
    bound assumes finite weights."""
    from engine.kernels import cpu_greedy_head

    if not cpu_greedy_head.available():
        pytest.skip("the AVX-512 VNNI greedy head cannot be built here")
    g = torch.Generator().manual_seed(5)
    w = torch.randn(4096 + 37, 24, generator=g)
    head = get_kernel("pack_linear", "cpu")(w, None)
    assert isinstance(cpu_greedy_head.pack_greedy_head(w, head), cpu_greedy_head.GreedyHead)
    w[4096 + 30, 5] = bad
    head = get_kernel("pack_linear", "cpu")(w, None)
    module = cpu_greedy_head.pack_greedy_head(w, head)
    assert not isinstance(module, cpu_greedy_head.GreedyHead)
    h = torch.randn(3, 24, generator=g)
    assert torch.equal(module(h), head(h).argmax(-1))
