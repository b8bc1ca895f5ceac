"""Linear layers on x86 CPUs, the weight re-laid-out once at load time for the kernel that reads it.

With AVX-512, the panel kernel (engine/kernels/csrc/panel_linear.cpp) is preferred: the weight in
16-column panels, one FMA chain per output element. It is 1.2-2.3x faster than oneDNN at decode batch
sizes and level with it from 256 rows on, and a row's result never depends on its batch. A weight that
is exactly a 4-bit block-affine code (csrc/affine4_codec.h; every projection of the default model, which
was dequantized from Q4_1) is also kept in that code, 5.3x smaller than the fp32 panels, and read from
it by steps of few rows, which stream every weight once and are bound by those bytes: the kernel
decodes it in registers to the same fp32 bits, so the results are bit-identical either way.

Otherwise oneDNN, with the weight reordered into the blocked layout its fp32 GEMM reads. At decode
batch sizes (M = 1..64) the default MKL sgemm path re-packs the weight on every call, and on AMD CPUs
it also skips its AVX-512 kernels; the pre-reordered oneDNN GEMM is 2-2.4x faster there (M=16:
255 -> 611 tok/s for SmolLM2-135M's weights, measured on the 2-core EPYC dev machine), with the same
fp32 arithmetic per element."""

from __future__ import annotations

import platform

import torch

from engine.kernels.cpp_extension import CppExtension
from engine.kernels.registry import register_kernel

_PANEL_EXT = CppExtension("tessera_panel_linear", "panel_linear.cpp")

# oneDNN picks its blocking from a batch-size hint; 64 was within 1% of the best hint at every M
# from 1 to 512 measured on the dev machine, so one packing serves decode and prefill alike.
BATCH_HINT = 64


def available() -> bool:
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class OneDNNLinear(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), BATCH_HINT)
        self.bias = None if bias is None else bias.detach().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in] -> [T, out]."""
        if x.shape[0] == 1:
            # A single row takes oneDNN's GEMV path, whose summation order differs from its GEMM's;
            # from two rows on every row's result is bit-identical whatever the batch size, which
            # keeps a request's output independent of what it is batched with.
            return torch.ops.mkldnn._linear_pointwise(x.repeat(2, 1), self.packed, self.bias, "none", [],
                                                      "")[:1]
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _fp32_only(module: type[torch.nn.Module], weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Module:
    if weight.dtype != torch.float32:  # both CPU kernels are fp32 GEMMs; other dtypes keep the reference
        from engine.kernels.reference import DenseLinear

        return DenseLinear(weight, bias)
    return module(weight, bias)


@register_kernel("pack_linear", "cpu", available=available, name="onednn_packed_linear")
def pack_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Module:
    """weight: [out, in] fp32 (other dtypes keep the reference), bias: [out] or None."""
    return _fp32_only(OneDNNLinear, weight, bias)


def panel_available() -> bool:
    ext = _PANEL_EXT.load()
    return ext is not None and ext.supported()


# Up to this many rows a weight that is an exact 4-bit code is read in its code, beyond it from the fp32
# panels. Measured on the dev machine, a whole SmolLM2-135M decode step, the two alternating in one
# process (median ms, fp32 panels -> code): 8 rows 22.7 -> 17.4, 16 rows 29.2 -> 28.3, 32 rows 56.8 ->
# 54.4; at 40 rows the code lost, 65.6 -> 67.7.
CODE_ROWS = 32


def _weight_for(module: torch.nn.Module, rows: int) -> torch.Tensor:
    """The form of `module`'s weight a step of `rows` rows reads fastest: its code or its fp32 panels."""
    return module.code if module.code is not None and rows <= CODE_ROWS else module.packed


class PanelLinear(torch.nn.Module):
    """`affine4`: when the weight is exactly a 4-bit block-affine code, also hold it in that code (a
    sixth of the fp32 panels' bytes) for steps of up to CODE_ROWS rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, affine4: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self._ext = _PANEL_EXT.load()
        w = weight.detach().contiguous()
        self.packed = self._ext.pack(w)  # [ceil(out/16), in, 16] fp32
        self.code = self._ext.pack_affine4(w) if affine4 else None  # [ceil(out/16), in/32, 384] uint8 | None
        self.bias = None if bias is None else bias.detach().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in] fp32 -> [T, out]; any other shape or dtype raises ValueError (checked in the kernel).
        The same bits from either form of the weight."""
        return self._ext.linear(x, _weight_for(self, x.shape[0]), self.bias, self.out_features)


class GatedPanelLinear(torch.nn.Module):
    """silu(x W_gate^T) * (x W_up^T) in one pass: the gate and up panels of the same outputs side by side,
    the activation applied to the sums while they are still in registers (no [T, 2I] intermediate).
    `affine4` as for PanelLinear."""

    def __init__(self, weight: torch.Tensor, affine4: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0] // 2
        self._ext = _PANEL_EXT.load()
        w = weight.detach().contiguous()
        self.packed = self._ext.pack_gated(w)  # [2 ceil(I/16), in, 16] fp32
        self.code = self._ext.pack_gated_affine4(w) if affine4 else None  # [2 ceil(I/16), in/32, 384] | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in] fp32 -> [T, I]; any other shape or dtype raises ValueError (checked in the kernel)."""
        return self._ext.gated_linear(x, _weight_for(self, x.shape[0]), self.out_features)


@register_kernel("pack_gated_linear", "cpu", available=panel_available, name="avx512_gated_panel_linear")
def pack_gated_linear(weight: torch.Tensor, linear=None, activation=None) -> torch.nn.Module:
    """weight: [2I, in] laid out [gate | up] -> a module computing silu(x W_gate^T) * (x W_up^T): [T, I].
    fp32 only; other weights get the reference's composition of `linear` and `activation`."""
    if weight.dtype != torch.float32 or weight.shape[0] % 2:
        from engine.kernels import reference

        return reference.pack_gated_linear(weight, linear or reference.pack_linear,
                                           activation or reference.silu_and_mul)
    return GatedPanelLinear(weight)


# registered after oneDNN, so it is tried first
@register_kernel("pack_linear", "cpu", available=panel_available, name="avx512_panel_linear")
def pack_panel_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Module:
    """weight: [out, in] fp32 (other dtypes keep the reference), bias: [out] or None."""
    return _fp32_only(PanelLinear, weight, bias)
