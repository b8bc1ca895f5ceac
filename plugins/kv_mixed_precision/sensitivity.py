"""Per-layer sensitivity of the model to KV quantization, measured on calibration text.

Two measurements, combined: the relative error of each layer's attention output when only its K/V are
quantized with a given (key bits, value bits) pair (cheap: replayed from recorded q, k, v), and, for one
reference pair, the KL divergence of the final logits when only that layer is quantized (one forward pass
per layer). The KL of a layer at any pair is then estimated as weight_l * error_l(pair), with
weight_l = KL_l(reference pair) / error_l(reference pair)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.attention_metadata import AttentionMetadata, PrefillSpan
from engine.fidelity import compare_logprobs, teacher_forced_logprobs
from engine.kv_spec import KVSpec
from engine.kv_storage import create_kv_storage
from plugins.kv_mixed_precision.config import LayerBits


class RecordingStorage:
    """Wraps a layer's storage and keeps (q, k, v) of every span that starts a sequence."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def write(self, k, v, meta):
        self.inner.write(k, v, meta)

    def attend(self, q, k, v, meta: AttentionMetadata, scale: float):
        for span in meta.prefills:
            if span.context_len == span.query_len:
                s, n = span.query_start, span.query_len
                self.records.append((q[s:s + n].clone(), k[s:s + n].clone(), v[s:s + n].clone()))
        return self.inner.attend(q, k, v, meta, scale)


def layer_spec(default: KVSpec, bits: LayerBits, mode: str, group_size: int) -> KVSpec:
    """The spec the plugin would give a layer with these bits (kept in step with plugin.kv_spec)."""
    if bits.key_bits == 16 and bits.value_bits == 16:
        return default
    storage = "kv_kivi" if mode == "kivi" and bits.key_bits != 16 else "kv_per_token"
    return dataclasses.replace(default, storage=storage, key_bits=bits.key_bits, value_bits=bits.value_bits,
                               group_size=group_size, quant_mode=mode)


def attention_error(records, spec: KVSpec, block_size: int, scale: float) -> float:
    """Relative squared error of the attention output over the recorded spans with K/V stored as `spec`
    (read through the storage's own attention, so residual and sink blocks count as they do in serving)."""
    num, den = 0.0, 0.0
    for q, k, v in records:
        t = k.shape[0]
        nb = -(-t // block_size)
        table = torch.arange(nb, device=k.device)
        store = create_kv_storage(spec, nb, block_size, k.device)
        meta = AttentionMetadata(block_size, torch.arange(t, device=k.device),
                                 prefills=[PrefillSpan(0, t, t, table)])
        store.write(k, v, meta)
        approx = store.attend(q, k, v, meta, scale)
        exact = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                               is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1)
        num += float((approx - exact).pow(2).sum())
        den += float(exact.pow(2).sum())
    return num / max(den, 1e-30)


@dataclass
class Sensitivity:
    pairs: list[LayerBits]
    errors: list[dict[LayerBits, float]]  # per layer: attention-output relative error per pair
    weights: list[float]  # per layer: KL per unit of attention error
    reference_pair: LayerBits
    reference_kl: list[float]  # per layer: measured KL with only that layer at the reference pair

    def predicted_kl(self, layer: int, bits: LayerBits) -> float:
        return self.weights[layer] * self.errors[layer][bits]


def measure(engine, sequences: list[list[int]], pairs: list[LayerBits], mode: str, group_size: int,
            reference_pair: LayerBits, progress: bool = True) -> tuple[Sensitivity, list[torch.Tensor]]:
    """Runs the calibration sequences: returns the sensitivity and the unmodified log-probabilities."""
    storages = engine.kv_storages
    originals = list(storages)
    recorders = [RecordingStorage(s) for s in originals]
    storages[:] = recorders
    try:
        reference = teacher_forced_logprobs(engine, sequences)
    finally:
        storages[:] = originals
    block_size = engine.kv.block_size
    scale = engine.arch.head_dim ** -0.5
    errors = []
    for layer, rec in enumerate(tqdm(recorders, desc="attention error", unit="layer", disable=not progress)):
        default = engine.kv_specs[layer]
        errors.append({p: attention_error(rec.records, layer_spec(default, p, mode, group_size), block_size, scale)
                       for p in pairs})
    del recorders
    kls = []
    for layer in tqdm(range(len(storages)), desc="layer KL", unit="layer", disable=not progress):
        spec = layer_spec(engine.kv_specs[layer], reference_pair, mode, group_size)
        storages[layer] = create_kv_storage(spec, engine.kv.num_blocks, block_size, engine.platform.device)
        try:
            kl, _, _ = compare_logprobs(reference, teacher_forced_logprobs(engine, sequences))
        finally:
            storages[layer] = originals[layer]
        kls.append(kl)
    weights = [kl / max(err[reference_pair], 1e-12) for kl, err in zip(kls, errors, strict=True)]
    return Sensitivity(pairs, errors, weights, reference_pair, kls), reference


def pareto_front(costs: dict[LayerBits, float]) -> list[LayerBits]:
    """Pairs not dominated in (mean bits, cost), cheapest first: each kept pair has a lower cost than
    every pair with fewer or equal bits."""
    order = sorted(costs, key=lambda p: (p.mean, costs[p], -p.key_bits))
    front: list[LayerBits] = []
    best = float("inf")
    for p in order:
        if costs[p] < best:
            front.append(p)
            best = costs[p]
    return front
