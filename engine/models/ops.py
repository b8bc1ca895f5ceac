"""The set of kernels one model instance calls, resolved once from the registry for its device so
`forward` never looks anything up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.kernels.registry import get_kernel


@dataclass(frozen=True)
class ModelOps:
    rms_norm: Callable
    add_rms_norm: Callable
    rotary: Callable
    silu_and_mul: Callable
    pack_linear: Callable  # (weight [out, in], bias) -> module; applied once at load time
    pack_greedy_head: Callable  # (lm head weight [V, D], logits module) -> module: hidden -> greedy ids
    # (weight [2I, in] as [gate | up], pack_linear, silu_and_mul) -> module: x -> silu(gate) * up
    pack_gated_linear: Callable

    @classmethod
    def for_device(cls, device_type: str, prefer_reference: bool = False) -> ModelOps:
        return cls(**{name: get_kernel(name, device_type, prefer_reference)
                      for name in ("rms_norm", "add_rms_norm", "rotary", "silu_and_mul", "pack_linear",
                                   "pack_greedy_head", "pack_gated_linear")})
