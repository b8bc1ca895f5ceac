"""The CPU panel GEMMs: rows independent of the batch, the fused gated GEMM bit-identical to the plain GEMM
then the activation, and clear errors for input the layer does not take."""

from __future__ import annotations

import pytest
import torch

from engine.kernels import cpu_elementwise, cpu_linear  # imported, they register their CPU kernels
from engine.kernels.registry import KERNELS

CPU_LINEARS = [e for op in ("pack_linear", "pack_gated_linear") for e in KERNELS.implementations(op)
               if e.device_type == "cpu"]


def test_gated_panel_linear_is_the_panel_linear_then_the_elementwise_activation_bit_for_bit():
    """The fused gated GEMM only moves the activation into the GEMM's epilogue: the same FMA chains and
    the same activation code, so the MLP's values do not change with the fusion."""
    if not (cpu_linear.panel_available() and cpu_elementwise.available()):
        pytest.skip("the AVX-512 panel kernels cannot be built here")
    g = torch.Generator().manual_seed(4)
    w = torch.randn(2 * 96, 80, generator=g) * 0.1
    fused, plain = cpu_linear.pack_gated_linear(w), cpu_linear.pack_panel_linear(w, None)
    for rows in (1, 6, 13, 64):
        x = torch.randn(rows, 80, generator=g) * 3
        assert torch.equal(fused(x), cpu_elementwise.silu_and_mul(plain(x))), f"{rows} rows"


@pytest.mark.parametrize("entry", CPU_LINEARS, ids=lambda e: e.name)
def test_cpu_linear_rows_do_not_depend_on_batch_size(entry):
    if not entry.available():
        pytest.skip(f"{entry.name} not available here")
    g = torch.Generator().manual_seed(1)
    w = torch.randn(256, 1536, generator=g) * 0.05
    lin = entry.fn(w) if entry.op == "pack_gated_linear" else entry.fn(w, None)
    x = torch.randn(70, 1536, generator=g)
    alone = torch.cat([lin(x[i:i + 1]) for i in range(x.shape[0])])
    for rows in (2, 5, 64, 70):
        assert torch.equal(lin(x[:rows]), alone[:rows]), f"row results changed with {rows} rows"


def test_panel_linear_rejects_input_of_the_wrong_width_or_dtype():
    if not cpu_linear.panel_available():
        pytest.skip("the AVX-512 panel linear cannot be built here")
    lin = cpu_linear.PanelLinear(torch.randn(40, 24), None)
    with pytest.raises(ValueError, match=r"takes \[T, 24\] fp32"):
        lin(torch.randn(3, 25))
    with pytest.raises(ValueError, match="fp32"):
        lin(torch.randn(3, 24, dtype=torch.float64))
    assert lin(torch.randn(3, 24)).shape == (3, 40)


def q4_1_weight(rows: int, cols: int, seed: int) -> torch.Tensor:
    """[rows, cols] fp32 as dequantizing a Q4_1 GGUF gives it: per block of 32 inputs an fp16 step d and
    minimum m, codes 0..15 (0 and 15 present, as a quantizer's minimum and maximum give them), w = d q + m
    with d q exact in fp32, rounded once."""
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(rows, cols // 32, 1, generator=g) * 0.02 + 1e-4).half().float()
    m = (-d * 7.5 + torch.randn(rows, cols // 32, 1, generator=g) * 1e-3).half().float()
    q = torch.randint(0, 16, (rows, cols // 32, 32), generator=g).float()
    q[..., 3], q[..., 20] = 0, 15
    return (d * q + m).reshape(rows, cols)


def _ext():
    if not cpu_linear.panel_available():
        pytest.skip("the AVX-512 panel kernels cannot be built here")
    return cpu_linear._PANEL_EXT.load()


def test_affine4_code_holds_a_dequantized_q4_1_weight_exactly():
    ext = _ext()
    w = q4_1_weight(70, 96, 0)  # 70 rows: the last panel part padding
    code = ext.pack_affine4(w)
    assert code is not None and code.dtype == torch.uint8
    assert w.numel() * 4 / code.numel() > 4, "the code is not 4x smaller than the fp32 weight (padding included)"
    back = ext.unpack(code)
    assert torch.equal(back[:70].view(torch.int32), w.view(torch.int32)), "decoding changed some bits"
    assert torch.equal(back[70:], torch.zeros(back.shape[0] - 70, 96))


@pytest.mark.parametrize("case", ["gaussian", "width not a multiple of 32", "nan", "17 levels in a block"])
def test_affine4_code_refuses_weights_it_cannot_hold_exactly(case):
    ext = _ext()
    w = q4_1_weight(32, 64, 1)
    if case == "gaussian":
        w = torch.randn(32, 64)
    elif case == "width not a multiple of 32":
        w = q4_1_weight(32, 96, 1)[:, :80].contiguous()
    elif case == "nan":
        w[5, 9] = float("nan")
    else:
        w[2, 40] = (w[2, 40] + w[2, 41]) / 2 if w[2, 40] != w[2, 41] else w[2, 40] + 1e-3
    assert ext.pack_affine4(w) is None


def test_linear_from_the_code_is_bit_identical_to_the_fp32_panels():
    """Every row count, the 16-row tiles' edges included, a partial last panel, strided rows: the code's
    kernel decodes to the same weights and runs the same FMA chains."""
    g = torch.Generator().manual_seed(2)
    ext = _ext()
    w = q4_1_weight(150, 192, 3)
    coded, plain = cpu_linear.PanelLinear(w, None), cpu_linear.PanelLinear(w, None, affine4=False)
    assert coded.code is not None and plain.code is None
    x = torch.randn(70, 2 * 192, generator=g)[:, :192]  # rows strided
    for rows in (1, 2, 15, 16, 17, 31, 32, 33, 70):
        assert torch.equal(ext.linear(x[:rows], coded.code, None, 150), plain(x[:rows])), f"{rows} rows"
        assert torch.equal(coded(x[:rows]), plain(x[:rows])), f"{rows} rows"
    bias = torch.randn(150, generator=g)
    assert torch.equal(cpu_linear.PanelLinear(w, bias)(x[:9]), cpu_linear.PanelLinear(w, bias, affine4=False)(x[:9]))


def test_gated_linear_from_the_code_is_bit_identical_to_the_fp32_panels():
    g = torch.Generator().manual_seed(5)
    ext = _ext()
    w = q4_1_weight(2 * 40, 64, 6)  # 40 outputs: a partial last pair
    coded, plain = cpu_linear.GatedPanelLinear(w), cpu_linear.GatedPanelLinear(w, affine4=False)
    assert coded.code is not None and plain.code is None
    x = torch.randn(40, 64, generator=g) * 3
    for rows in (1, 7, 16, 17, 40):
        assert torch.equal(ext.gated_linear(x[:rows], coded.code, 40), plain(x[:rows])), f"{rows} rows"
        assert torch.equal(coded(x[:rows]), plain(x[:rows])), f"{rows} rows"
