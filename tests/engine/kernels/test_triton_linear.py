"""Triton skinny-batch linear against a float64 product on fresh random inputs: exact-fit and ragged
shapes, split-K, bias, the cuBLAS hand-off above 16 rows, and rows that do not depend on the batch
size (what makes CUDA-graph padding invisible). Skips without CUDA."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _lin():
    return pytest.importorskip("engine.kernels.triton_linear")


@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (100, 200), (1000, 4160)])
@pytest.mark.parametrize("m", [1, 3, 16, 17])
def test_linear_matches_float64(n, k, m):
    tl = _lin()
    g = torch.Generator(device="cuda").manual_seed(n + k + m)
    w = (0.02 * torch.randn(n, k, generator=g, device="cuda")).bfloat16()
    b = torch.randn(n, generator=g, device="cuda").bfloat16()
    x = torch.randn(m, k, generator=g, device="cuda").bfloat16()
    layer = tl.pack_linear(w, b)
    got = layer(x)
    want = x.double() @ w.double().T + b.double()
    assert got.shape == (m, n) and got.dtype == torch.bfloat16 and not torch.isnan(got).any()
    assert float((got.double() - want).norm() / want.norm()) < 1e-2


@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (1000, 4160)])
def test_rows_do_not_depend_on_batch_size(n, k):
    tl = _lin()
    g = torch.Generator(device="cuda").manual_seed(7)
    w = (0.02 * torch.randn(n, k, generator=g, device="cuda")).bfloat16()
    x = torch.randn(16, k, generator=g, device="cuda").bfloat16()
    full = tl.skinny_linear(x, w)
    for m in (1, 2, 5, 8):
        assert torch.equal(tl.skinny_linear(x[:m], w), full[:m])


def test_fp32_weights_stay_on_cublas():
    tl = _lin()
    from engine.kernels.reference import DenseLinear

    w = torch.randn(64, 32, device="cuda")
    assert isinstance(tl.pack_linear(w), DenseLinear)
    assert isinstance(tl.pack_linear(w.bfloat16()), tl.SkinnyLinear)
