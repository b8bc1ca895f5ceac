"""Greedy tokens from the final hidden states without the full fp32 LM head, on x86 CPUs with AVX-512 VNNI
(engine/kernels/csrc/greedy_head.cpp): an int8 screen of the vocabulary with a rigorous error bound, then
the panel GEMM's exact fp32 logits for the few tokens the bound cannot rule out. The token is always the
argmax the full logits would give; rows the screen cannot settle cheaply (non-finite hidden states, too
many candidates) get their full logits from the LM head module instead."""

from __future__ import annotations

import torch

from engine.kernels import cpu_linear
from engine.kernels.cpp_extension import CppExtension
from engine.kernels.registry import register_kernel

_EXT = CppExtension("tessera_cpu_greedy_head", "greedy_head.cpp")
# Features kept in fp32 per call (the batch's largest by magnitude) and the most candidates a row may
# have before it takes the full LM head. On SmolLM2-135M decode rows, 8 features leave a median of 1-2
# candidates per row (engine/kernels/csrc/greedy_head.cpp says why a few features must stay fp32); a
# candidate's exact logit costs about 0.1 us, a row of the full head about 3 ms.
NUM_FP32_FEATURES = 8
MAX_CANDIDATES = 8192


def available() -> bool:
    ext = _EXT.load()
    return ext is not None and ext.supported() and cpu_linear.panel_available()


class GreedyHead(torch.nn.Module):
    """Next greedy tokens of final hidden states [R, D]: the argmax of head(hidden) for the LM head module
    `head` (a panel linear over `weight`), computed mostly in int8."""

    def __init__(self, weight: torch.Tensor, head: torch.nn.Module) -> None:
        super().__init__()
        if not isinstance(head, cpu_linear.PanelLinear) or head.bias is not None:
            raise ValueError("the int8 greedy head needs the bias-free panel linear LM head")
        self._ext = _EXT.load()
        self.weight = weight.detach()
        self.head = head
        # int8 weight [ceil(V/16), ceil(D/4), 16, 4] and per-token scale and norms [3, ceil(V/16)*16]
        self.packed, self.stats = self._ext.pack(self.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [R, D] fp32 -> [R] int64 token ids."""
        tokens = self._ext.greedy_tokens(hidden, self.packed, self.head.packed, self.weight, self.stats,
                                         NUM_FP32_FEATURES, MAX_CANDIDATES)
        rest = (tokens < 0).nonzero().flatten()
        if rest.numel():
            tokens[rest] = self.head(hidden.index_select(0, rest)).argmax(-1)
        return tokens


def _all_finite(weight: torch.Tensor, rows: int = 4096) -> bool:
    # by slices of rows: torch.isfinite over the whole LM head allocates temporaries several times its
    # bool result (170 MB for SmolLM2-135M's 113 MB head), which stayed in the process's peak RSS
    return all(bool(torch.isfinite(part).all()) for part in weight.split(rows))


def _usable(weight: torch.Tensor, head: torch.nn.Module) -> bool:
    return (weight.dtype == torch.float32 and weight.dim() == 2 and isinstance(head, cpu_linear.PanelLinear)
            and head.bias is None and _all_finite(weight))


@register_kernel("pack_greedy_head", "cpu", available=available, name="vnni_greedy_head")
def pack_greedy_head(weight: torch.Tensor, head: torch.nn.Module) -> torch.nn.Module:
    """weight: [V, D] the LM head weight, head: the module computing its logits -> a module mapping hidden
    states [R, D] to their greedy tokens [R] int64 (the reference's argmax where this kernel cannot
    serve the weight)."""
    from engine.kernels.reference import pack_greedy_head as reference

    return GreedyHead(weight, head) if _usable(weight, head) else reference(weight, head)
