"""Builds the model for a resolved model spec directly on its device: HF/GGUF weights streamed
tensor by tensor into preallocated (fused) parameters, or random weights for synthetic shapes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.loader.model_registry import ResolvedModel
from engine.loader.weights import iter_safetensors
from engine.models.llama import LlamaForCausalLM

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
}


def build_model(resolved: ResolvedModel, dtype: torch.dtype, device: torch.device, seed: int = 0,
                transform: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> LlamaForCausalLM:
    arch = resolved.arch
    if arch.architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch.architecture!r}; supported: "
                         f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}")
    # Parameters are created on the meta device and materialized once on the target, so loading
    # never holds two copies of the weights.
    with torch.device("meta"):
        model = LlamaForCausalLM(arch)
    if transform is not None:
        model = transform(model)
    model = model.to(dtype).to_empty(device=device)
    if resolved.kind == "synthetic":
        model.init_random(seed)
    else:
        model.load_weights((name, t.to(dtype)) for name, t in iter_safetensors(resolved.path))
    model.eval()
    model.requires_grad_(False)
    return model
