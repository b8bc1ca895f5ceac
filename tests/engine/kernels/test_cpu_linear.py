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
