"""Triton SiLU-and-mul against the reference on fresh random inputs. Skips without CUDA."""

from __future__ import annotations

import pytest
import torch

from engine.kernels import reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,inter", [(1, 14336), (33, 1536), (7, 100)])
def test_silu_and_mul_matches_reference(dtype, rows, inter):
    ta = pytest.importorskip("engine.kernels.triton_activation")
    g = torch.Generator(device="cuda").manual_seed(rows * inter)
    x = (4 * torch.randn(rows, 2 * inter, generator=g, device="cuda")).to(dtype)
    got = ta.silu_and_mul(x)
    want = reference.silu_and_mul(x)
    assert got.shape == (rows, inter) and not torch.isnan(got).any()
    # exp is computed by different libraries, so an fp32 result may differ in the last bit before rounding
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
