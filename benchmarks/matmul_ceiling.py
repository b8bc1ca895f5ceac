"""The matmul ceiling of `tessera bench throughput`: the time of one pass over every weight matrix a
decode step multiplies by (in the benchmark's dtype, float32 by default), i.e. an upper bound on decode
tokens/s that ignores attention and all other work. Measured two ways: with torch's F.linear (on x86
CPUs, MKL sgemm) and with the engine's own linear kernel (on x86 CPUs with AVX-512, the panel kernel of
engine/kernels/csrc/panel_linear.cpp, else oneDNN; both with weights re-laid-out at load time and
2-4x faster than MKL at decode batch sizes). The headline ceiling is the faster of the two, so
native is never reported against a bound it already beats by using a better GEMM. Kept apart from the
backends it bounds."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path


def linear_weights(resolved, dtype: str, device):
    """Every weight matrix a decode step multiplies by (lm_head included, embedding lookup excluded)."""
    import torch

    tdtype = getattr(torch, "float32" if dtype == "auto" else dtype)
    if resolved.path is None:  # synthetic: the real shapes with random values
        a, g = resolved.arch, torch.Generator().manual_seed(0)
        shapes = [(a.num_heads * a.head_dim, a.hidden_size), (a.num_kv_heads * a.head_dim, a.hidden_size),
                  (a.num_kv_heads * a.head_dim, a.hidden_size), (a.hidden_size, a.num_heads * a.head_dim),
                  (a.intermediate_size, a.hidden_size), (a.intermediate_size, a.hidden_size),
                  (a.hidden_size, a.intermediate_size)] * a.num_layers + [(a.vocab_size, a.hidden_size)]
        return [torch.randn(s, generator=g, dtype=torch.float32).to(device=device, dtype=tdtype)
                for s in shapes]
    from safetensors import safe_open

    weights, embed, lm_head = [], None, None
    for f in sorted(Path(resolved.path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if name.endswith("embed_tokens.weight"):
                    embed = st.get_tensor(name)
                elif name.endswith("lm_head.weight"):
                    lm_head = st.get_tensor(name)
                elif name.endswith(".weight") and len(st.get_slice(name).get_shape()) == 2:
                    weights.append((name, st.get_tensor(name)))
    weights.sort(key=lambda nw: _layer_order(nw[0]))
    head = lm_head if lm_head is not None else embed
    mats = [w for _, w in weights] + ([head] if head is not None else [])
    return [w.to(device=device, dtype=tdtype).contiguous() for w in mats]


def _layer_order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1]), name
    return 1 << 30, name


def engine_linears(weights) -> list:
    """The weights as the engine multiplies by them: its device's `pack_linear` modules."""
    from engine.kernels.registry import get_kernel

    pack = get_kernel("pack_linear", weights[0].device.type)
    return [pack(w, None) for w in weights]


def timed_pass(calls) -> float:
    """calls: [(fn, x)] -> seconds for one pass of fn(x) over all of them (the GPU synchronized around it)."""
    import torch

    cuda = calls[0][1].device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for fn, x in calls:
            fn(x)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def matmul_ceiling(weights, batch: int, min_time_s: float = 1.0, linears: list | None = None) -> dict:
    """weights: [out, in] matrices; linears: the same weights as callables (engine_linears), else
    F.linear is timed."""
    import torch
    import torch.nn.functional as F

    device = weights[0].device
    inputs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=weights[0].dtype, device=device)
              for w in weights}
    calls = ([(lin, inputs[w.shape[1]]) for lin, w in zip(linears, weights, strict=True)] if linears is not None
             else [(lambda x, w=w: F.linear(x, w), inputs[w.shape[1]]) for w in weights])

    for _ in range(2):
        timed_pass(calls)
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time_s and len(times) < 200):
        times.append(timed_pass(calls))
    # The fastest pass: a ceiling is a best case, and on a shared machine noise only ever adds time.
    step = min(times)
    return {"tok_s": batch / step, "time_per_step_s": step, "median_time_per_step_s": statistics.median(times),
            "num_matrices": len(weights),
            "weight_bytes": sum(w.numel() * w.element_size() for w in weights), "passes": len(times)}


def add_ceilings(results, details, resolved, dtype, concurrencies) -> None:
    """Measures the ceiling at each concurrency and adds it to `throughput.run`'s results and details."""
    import gc

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print("[throughput] measuring the matmul ceiling", file=sys.stderr, flush=True)
    weights = linear_weights(resolved, dtype, device)
    linears = engine_linears(weights)
    try:
        for c in concurrencies:
            by = {"F.linear": matmul_ceiling(weights, c), "engine_linear": matmul_ceiling(weights, c, linears=linears)}
            best = max(by, key=lambda k: by[k]["tok_s"])
            r = results[f"c{c}"]
            r["matmul_ceiling_tok_s"] = by[best]["tok_s"]
            r["matmul_ceiling_by_gemm"] = {k: v["tok_s"] for k, v in by.items()}
            native = r["backends"].get("native")
            r["native_frac_of_ceiling"] = native["output_tok_s"] / by[best]["tok_s"] if native else None
            details[f"c{c}"]["matmul_ceiling"] = {**by[best], "gemm": best, "by_gemm": by,
                                                   "dtype": "float32" if dtype == "auto" else dtype,
                                                   "device": device.type,
                                                   "torch_threads": torch.get_num_threads()}
    finally:
        del weights, linears
        gc.collect()
