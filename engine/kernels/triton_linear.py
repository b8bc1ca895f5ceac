"""Skinny-batch linear layers for CUDA. At decode batch sizes a projection is a matrix-vector product
bound by reading the weight once; this Triton kernel streams each weight tile through a deep
software pipeline and multiplies it on the tensor cores with the few activation rows padded to 16.
Larger batches go to cuBLAS. Each output row is computed the same way whatever the batch size, and
the split-K partial sums are added in a fixed order, so results do not depend on the batch or on a
CUDA graph's padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from engine.kernels.registry import register_kernel
from engine.kernels.triton_availability import triton_cuda_available

MAX_SKINNY_ROWS = 16


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, y_ptr, M, N, K, k_chunk, stride_xm, stride_wn, stride_ym,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   SPLIT_K: tl.constexpr, EVEN: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    k_lo = pid_k * k_chunk
    k_hi = tl.minimum(k_lo + k_chunk, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + offs_k
        if EVEN:
            x = tl.load(x_rows + kk[None, :], mask=offs_m[:, None] < M, other=0.0)
            w = tl.load(w_rows + kk[None, :])
        else:
            x = tl.load(x_rows + kk[None, :], mask=(offs_m[:, None] < M) & (kk[None, :] < k_hi), other=0.0)
            w = tl.load(w_rows + kk[None, :], mask=(offs_n[:, None] < N) & (kk[None, :] < k_hi), other=0.0)
        acc += tl.dot(x, tl.trans(w))
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=mask)


def skinny_config(n: int, k: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages) for an [n, k] weight, from a sweep on an H100
    over Llama-3-8B's projections at one row: narrow tiles and a deep pipeline stream best; wide
    tiles only for the very tall gate/up matrix; split-K never paid."""
    if 16384 <= n < 65536:
        return 128, 128, 1, 4, 6
    return 32, 256, 1, 4, 6


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  config: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """x: [M, K] with M <= 16, weight: [N, K] (row-major), bias: [N] or None -> [M, N] in x's dtype."""
    m, k = x.shape
    n = weight.shape[0]
    if x.stride(-1) != 1:
        x = x.contiguous()
    block_n, block_k, split, warps, stages = config or skinny_config(n, k)
    k_chunk = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    even = n % block_n == 0 and k % k_chunk == 0
    if split == 1:
        y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        y = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    _skinny_kernel[(triton.cdiv(n, block_n), split)](
        x, weight, y, m, n, k, k_chunk, x.stride(0), weight.stride(0), y.stride(-2), BLOCK_M=16,
        BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, EVEN=even, num_warps=warps, num_stages=stages)
    if split > 1:
        y = y.sum(0).to(x.dtype)
    if bias is not None:
        y = y + bias
    return y


class SkinnyLinear(torch.nn.Module):
    """y = x @ weight^T + bias: the Triton kernel up to 16 rows, cuBLAS above."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias
        self.config = skinny_config(weight.shape[0], weight.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in] -> [T, out]."""
        if 0 < x.shape[0] <= MAX_SKINNY_ROWS:
            return skinny_linear(x, self.weight, self.bias, self.config)
        return F.linear(x, self.weight, self.bias)


def _available() -> bool:
    return triton_cuda_available()


@register_kernel("pack_linear", "cuda", available=_available, name="triton_skinny_linear")
def pack_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Module:
    """weight: [out, in], bias: [out] or None. bf16/fp16 weights get the skinny-batch kernel; fp32
    stays on cuBLAS, which the CUDA-vs-CPU exactness check relies on."""
    from engine.kernels.reference import DenseLinear

    if weight.dtype not in (torch.bfloat16, torch.float16) or weight.stride(-1) != 1:
        return DenseLinear(weight, bias)
    return SkinnyLinear(weight, bias)
