"""Triton rotary embedding against the reference on fresh random inputs and real position tables,
with queries/keys as non-contiguous views of a fused QKV output. Skips without CUDA."""

from __future__ import annotations

import pytest
import torch

from engine.kernels import reference
from engine.models.rotary_embedding import RotaryTable

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,dim", [(32, 8, 128), (9, 3, 64), (4, 2, 16)])
def test_rotary_matches_reference(dtype, heads, kv_heads, dim):
    tr = pytest.importorskip("engine.kernels.triton_rotary")
    g = torch.Generator(device="cuda").manual_seed(heads * dim)
    t = 29
    qkv = torch.randn(t, (heads + 2 * kv_heads) * dim, generator=g, device="cuda").to(dtype)
    q = qkv[:, :heads * dim].view(t, heads, dim)
    k = qkv[:, heads * dim:(heads + kv_heads) * dim].view(t, kv_heads, dim)
    table = RotaryTable(dim, 4096, 500000.0, None, dtype, torch.device("cuda"))
    pos = torch.randint(0, 4096, (t,), generator=g, device="cuda")
    cos, sin = table.lookup(pos)
    got_q, got_k = tr.rotary(q, k, cos, sin)
    want_q, want_k = reference.rotary(q, k, cos, sin)
    # each product and the sum are rounded as the reference's elementwise ops round them
    torch.testing.assert_close(got_q, want_q, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_k, want_k, atol=1e-6, rtol=1e-6)
