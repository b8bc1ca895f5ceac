"""Triton RMSNorm and residual-add RMSNorm against the reference on fresh random inputs (including
per-head views of a fused QKV output, as q/k norms see them). Skips without CUDA."""

from __future__ import annotations

import pytest
import torch

from engine.kernels import reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _norm():
    return pytest.importorskip("engine.kernels.triton_norm")


def _rel(got, want):
    assert not torch.isnan(got).any()
    return float((got.double() - want.double()).norm() / want.double().norm())


# bf16: the reference rounds the normalized row to bf16 before the weight multiply, as the kernel does,
# so only the order of the mean's accumulation differs: nearly all elements are bit-identical.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 4e-3)])
@pytest.mark.parametrize("rows,n", [(1, 4096), (37, 576), (300, 64), (5, 100)])
def test_rms_norm(dtype, tol, rows, n):
    tn = _norm()
    g = torch.Generator(device="cuda").manual_seed(rows * n)
    x = (3 * torch.randn(rows, n, generator=g, device="cuda")).to(dtype)
    w = (1 + 0.1 * torch.randn(n, generator=g, device="cuda")).to(dtype)
    assert _rel(tn.rms_norm(x, w, 1e-5), reference.rms_norm(x, w, 1e-5)) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 4e-3)])
def test_rms_norm_on_head_views(dtype, tol):
    tn = _norm()
    g = torch.Generator(device="cuda").manual_seed(1)
    t, h, kvh, d = 11, 16, 8, 128
    qkv = torch.randn(t, (h + 2 * kvh) * d, generator=g, device="cuda").to(dtype)
    k = qkv[:, h * d:(h + kvh) * d].view(t, kvh, d)
    w = (1 + 0.1 * torch.randn(d, generator=g, device="cuda")).to(dtype)
    got = tn.rms_norm(k, w, 1e-6)
    assert got.shape == k.shape
    assert _rel(got, reference.rms_norm(k, w, 1e-6)) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 4e-3)])
@pytest.mark.parametrize("rows,n", [(1, 4096), (64, 576), (3, 100)])
def test_add_rms_norm(dtype, tol, rows, n):
    tn = _norm()
    g = torch.Generator(device="cuda").manual_seed(rows + n)
    x = torch.randn(rows, n, generator=g, device="cuda").to(dtype)
    r = (2 * torch.randn(rows, n, generator=g, device="cuda")).to(dtype)
    w = (1 + 0.1 * torch.randn(n, generator=g, device="cuda")).to(dtype)
    got, got_res = tn.add_rms_norm(x, r, w, 1e-5)
    want, want_res = reference.add_rms_norm(x, r, w, 1e-5)
    assert torch.equal(got_res, want_res)  # the residual sum is one rounding either way
    assert _rel(got, want) < tol
