"""`tessera bench roofline` (CUDA only): the engine against the GPU's own limits, measured in one run.

1. Ceilings: device-to-device copy bandwidth (read + write bytes) and an 8192^3 bf16 matmul.
2. Native engine on a synthetic model (random bf16 weights of a real shape, built on the GPU):
   batch-1 decode (tokens/s after the first token) as a fraction of the decode roofline, i.e. measured
   bandwidth over the model's weight bytes; output tokens/s at each concurrency (--input-len in /
   --output-len out, EOS ignored); prefill tokens/s for --prefill-len-token prompts and its MFU,
   i.e. 2 x params FLOPs per token over the measured matmul peak.
3. CUDA graphs against eager decode on the same engine and prompts (greedy tokens must be identical).
4. Hugging Face transformers `generate` on a model of the same shape (random weights, bf16, SDPA),
   static batches of the same prompts: the baseline, measured in the same process and run.
Writes benchmarks/results/roofline-<device>.json (or --json) and a PNG next to it.
"""

from __future__ import annotations

import gc
import re
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.device_ceilings import copy_bandwidth_gbps, matmul_tflops

GIB = 1 << 30


def register(subparsers) -> None:
    p = subparsers.add_parser("roofline", help="GPU: decode/prefill against measured bandwidth and matmul peak",
                              description=__doc__)
    p.add_argument("--model", default="synthetic:llama3-8b", help="synthetic:<shape> (random weights)")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--b1-output-len", type=int, default=256, help="new tokens of the batch-1 decode run")
    p.add_argument("--concurrency", default="16,64,256")
    p.add_argument("--prefill-len", type=int, default=2048)
    p.add_argument("--prefill-prompts", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192, help="native per-step token budget")
    p.add_argument("--no-hf", dest="hf", action="store_false", help="skip the transformers baseline")
    p.add_argument("--json", default=None, help="output JSON (PNG next to it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; unknown names are slugified whole."""
    m = re.search(r"\b([AHBLV]\d{2,3}[A-Za-z]?|GH\d{3}|GB\d{3})\b", name)
    return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()


def build_engine(model: str, max_num_seqs: int, max_model_len: int, budget: int, kv_bytes: int,
                 graphs: bool):
    from engine.config import CacheConfig, DeviceConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(
        model=ModelConfig(model=model, dtype="bfloat16", max_model_len=max_model_len),
        cache=CacheConfig(kv_cache_memory_bytes=kv_bytes, enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max(budget, max_num_seqs)),
        device=DeviceConfig(device="cuda", cuda_graph_max_batch=max_num_seqs if graphs else 0)))


def timed_generate(eng, prompts: list[list[int]], max_tokens: int, desc: str, progress: bool) -> dict:
    """Greedy, exactly max_tokens new tokens each. Returns tokens, elapsed_s and first_token_s (time
    until the first request produced its first token)."""
    import torch
    from tqdm import tqdm

    from engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    ids = [f"roofline-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    for rid, prompt in zip(ids, prompts, strict=True):
        eng.add_request(rid, prompt, params)
    done: dict[str, list[int]] = {}
    first = None
    with tqdm(total=len(prompts) * max_tokens, desc=desc, unit="tok", disable=not progress,
              file=sys.stderr) as bar:
        while eng.has_unfinished_requests():
            for out in eng.step():
                n = len(out.outputs[0].delta_token_ids)
                if n and first is None:
                    first = time.perf_counter() - t0
                bar.update(n)
                if out.finished:
                    if out.error:
                        raise RuntimeError(f"request {out.request_id} failed: {out.error}")
                    done[out.request_id] = list(out.outputs[0].token_ids)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return {"tokens": [done[r] for r in ids], "elapsed_s": elapsed, "first_token_s": first}


def _prompts(eng, count: int, length: int, seed: int) -> list[list[int]]:
    from benchmarks.workload import random_prompts

    return random_prompts(eng.tokenizer, eng.arch.vocab_size, count, length, seed)


def run_native_decode(args, concurrencies: list[int], progress: bool) -> dict:
    """Batch-1 and concurrent decode on one engine, then the same prompts eagerly for the graph check."""
    import torch

    from benchmarks.workload import kv_bytes_per_token

    max_c = max([1, *concurrencies])
    seq_len = args.input_len + max(args.output_len, args.b1_output_len)
    max_len = -(-(seq_len + 16) // 64) * 64
    out: dict = {}
    t0 = time.perf_counter()
    from engine.loader.model_registry import resolve_model

    kv = int(1.2 * kv_bytes_per_token(resolve_model(args.model).arch, "bfloat16") * max_len * max_c) + GIB
    eng = build_engine(args.model, max_c, max_len, args.max_num_batched_tokens, kv, graphs=True)
    out["load_and_capture_s"] = time.perf_counter() - t0
    out["graph_buckets"] = eng.runner.graph_runner.buckets if eng.runner.graph_runner else []
    try:
        eng.warmup()
        b1_prompt = _prompts(eng, 1, args.input_len, args.seed + 1)
        timed_generate(eng, b1_prompt, 8, "warmup b1", False)
        r = timed_generate(eng, b1_prompt, args.b1_output_len, "native b1", progress)
        n = args.b1_output_len
        out["b1"] = {"tok_s": (n - 1) / (r["elapsed_s"] - r["first_token_s"]),
                     "e2e_tok_s": n / r["elapsed_s"], "elapsed_s": r["elapsed_s"], "output_tokens": n,
                     "tokens": r["tokens"], "prompts": b1_prompt}
        for c in concurrencies:
            prompts = _prompts(eng, c, args.input_len, args.seed + 100 + c)
            timed_generate(eng, _prompts(eng, c, args.input_len, args.seed + 200 + c), 4, "warmup", False)
            r = timed_generate(eng, prompts, args.output_len, f"native c={c}", progress)
            total = sum(len(t) for t in r["tokens"])
            out[f"c{c}"] = {"tok_s": total / r["elapsed_s"], "elapsed_s": r["elapsed_s"],
                            "output_tokens": total, "prompts": prompts, "tokens": r["tokens"]}
        # the same prompts with the graphs detached: eager decode must give the same greedy tokens
        graphs, eng.runner.graph_runner = eng.runner.graph_runner, None
        graphs.drain()
        checks = {}
        check_c = [c for c in concurrencies if c <= 64][:1]
        r = timed_generate(eng, b1_prompt, min(64, args.b1_output_len), "eager b1", progress)
        checks["b1"] = {"identical": r["tokens"][0] == out["b1"]["tokens"][0][:len(r["tokens"][0])],
                        "eager_e2e_tok_s": len(r["tokens"][0]) / r["elapsed_s"]}
        for c in check_c:
            r = timed_generate(eng, out[f"c{c}"]["prompts"], args.output_len, f"eager c={c}", progress)
            same = [a == b for a, b in zip(r["tokens"], out[f"c{c}"]["tokens"], strict=True)]
            checks[f"c{c}"] = {"identical": all(same), "identical_sequences": sum(same), "sequences": len(same),
                               "eager_tok_s": sum(len(t) for t in r["tokens"]) / r["elapsed_s"]}
        eng.runner.graph_runner = graphs
        out["graphs_vs_eager"] = checks
        out["settings"] = {"max_model_len": max_len, "max_num_seqs": max_c, "kv_cache_bytes": kv,
                           "max_num_batched_tokens": args.max_num_batched_tokens, "prefix_caching": False,
                           "lookahead_hits": graphs.lookahead_hits, "lookahead_misses": graphs.lookahead_misses}
    finally:
        eng.close()
        del eng
        gc.collect()
        torch.cuda.empty_cache()
    return out


def run_native_prefill(args, progress: bool) -> dict:
    import torch

    max_len = args.prefill_len + 64
    eng = build_engine(args.model, 64, max_len, args.max_num_batched_tokens, 24 * GIB, graphs=False)
    try:
        warm = _prompts(eng, 4, args.prefill_len, args.seed + 7)
        timed_generate(eng, warm, 1, "warmup prefill", False)
        prompts = _prompts(eng, args.prefill_prompts, args.prefill_len, args.seed + 8)
        r = timed_generate(eng, prompts, 1, f"native prefill {args.prefill_len}", progress)
        tokens = args.prefill_prompts * args.prefill_len
        return {"tok_s": tokens / r["elapsed_s"], "elapsed_s": r["elapsed_s"], "prompt_tokens": tokens,
                "settings": {"max_num_batched_tokens": args.max_num_batched_tokens, "max_model_len": max_len}}
    finally:
        eng.close()
        del eng
        gc.collect()
        torch.cuda.empty_cache()


def run_hf(args, runs: dict[str, list[list[int]]], progress: bool) -> dict:
    """transformers generate (greedy, exact lengths) per named batch of equal-length prompts."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchmarks.workload import write_hf_config_dir
    from engine.loader.model_registry import resolve_model

    resolved = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = AutoConfig.from_pretrained(write_hf_config_dir(resolved, Path(tmp) / "cfg"))
    torch.manual_seed(args.seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    pad = resolved.arch.eos_token_ids[0]
    out: dict = {"transformers": transformers.__version__, "attn_implementation":
                 getattr(model.config, "_attn_implementation", None)}
    try:
        for name, (prompts, new_tokens) in runs.items():
            ids = torch.tensor(prompts, dtype=torch.long, device="cuda")
            mask = torch.ones_like(ids)

            def gen(n, ids=ids, mask=mask):
                with torch.inference_mode():
                    return model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                          min_new_tokens=n, pad_token_id=pad, num_beams=1)
            gen(4)
            torch.cuda.synchronize()
            print(f"hf {name}: {len(prompts)} x {new_tokens} tokens ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            res = gen(new_tokens)
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            total = int(res[:, ids.shape[1]:].numel())
            out[name] = {"tok_s": total / elapsed, "elapsed_s": elapsed, "output_tokens": total}
    finally:
        model = None  # noqa: F841  (frees 16 GB before the caller goes on)
        gc.collect()
        torch.cuda.empty_cache()
    return out


def run(args) -> int:
    import torch

    from benchmarks.workload import kv_bytes_per_token, parse_int_list
    from engine.loader.model_registry import resolve_model

    if not torch.cuda.is_available():
        raise ValueError("tessera bench roofline needs a CUDA GPU")
    if not args.model.startswith("synthetic:"):
        raise ValueError("--model must be synthetic:<shape> (random weights are built on the GPU)")
    for name in ("input_len", "output_len", "b1_output_len", "prefill_len", "prefill_prompts"):
        if getattr(args, name) < 2:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 2")
    concurrencies = parse_int_list(args.concurrency, "--concurrency")
    arch = resolve_model(args.model).arch
    gpu = torch.cuda.get_device_name(0)
    slug = device_slug(gpu)
    n_params = arch.num_params
    # what a prompt token really multiplies: every projection, not the embedding lookup, and the LM
    # head only at each prompt's last token
    head = 0 if arch.tie_word_embeddings else arch.vocab_size * arch.hidden_size
    executed = n_params - arch.vocab_size * arch.hidden_size - head
    weight_bytes = 2 * n_params
    print(f"{gpu}: measuring copy bandwidth and matmul peak", file=sys.stderr)
    copy = copy_bandwidth_gbps()
    peak = matmul_tflops()
    roof_b1 = copy * 1e9 / weight_bytes
    decode = run_native_decode(args, concurrencies, args.progress)
    prefill = run_native_prefill(args, args.progress)
    hf: dict = {}
    if args.hf:
        runs = {"b1": (decode["b1"]["prompts"], args.output_len)}
        runs.update({f"c{c}": (decode[f"c{c}"]["prompts"], args.output_len) for c in concurrencies})
        try:
            hf = run_hf(args, runs, args.progress)
        except Exception as exc:  # the native figures stand on their own; say why the baseline is missing
            hf = {"error": f"{type(exc).__name__}: {exc}"}
    data = {
        "device": gpu, "model": args.model, "dtype": "bfloat16", "params": n_params, "weight_bytes": weight_bytes,
        "copy_GBps": copy, "matmul_tflops": peak,
        "decode_b1": {"tok_s": decode["b1"]["tok_s"], "roofline_tok_s": roof_b1,
                      "roofline_frac": decode["b1"]["tok_s"] / roof_b1, "e2e_tok_s": decode["b1"]["e2e_tok_s"],
                      "output_tokens": decode["b1"]["output_tokens"], "hf_tok_s": hf.get("b1", {}).get("tok_s")},
    }
    kv_token = kv_bytes_per_token(arch, "bfloat16")
    for c in concurrencies:
        nat, base = decode[f"c{c}"], hf.get(f"c{c}", {})
        # decode-only bound: per step, read the weights and every sequence's KV at the mean context, or
        # do 2 x params FLOPs per sequence, whichever takes longer on the measured ceilings
        step_bytes = weight_bytes + c * (args.input_len + args.output_len / 2) * kv_token
        step_s = max(step_bytes / (copy * 1e9), 2 * n_params * c / (peak * 1e12))
        data[f"decode_c{c}"] = {"tok_s": nat["tok_s"], "hf_tok_s": base.get("tok_s"),
                                "vs_hf": nat["tok_s"] / base["tok_s"] if base.get("tok_s") else None,
                                "roofline_tok_s": c / step_s, "roofline_frac": nat["tok_s"] * step_s / c,
                                "elapsed_s": nat["elapsed_s"], "output_tokens": nat["output_tokens"]}
    data["prefill_2048" if args.prefill_len == 2048 else f"prefill_{args.prefill_len}"] = {
        "tok_s": prefill["tok_s"], "mfu": prefill["tok_s"] * 2 * n_params / (peak * 1e12),
        "mfu_executed": prefill["tok_s"] * 2 * executed / (peak * 1e12),
        "prompts": args.prefill_prompts, "elapsed_s": prefill["elapsed_s"], "settings": prefill["settings"]}
    data["graphs_vs_eager"] = decode["graphs_vs_eager"]
    data["workload"] = {"input_len": args.input_len, "output_len": args.output_len,
                        "b1_output_len": args.b1_output_len, "ignore_eos": True, "greedy": True}
    data["native_settings"] = {**decode["settings"], "graph_buckets": decode["graph_buckets"],
                               "load_and_capture_s": decode["load_and_capture_s"]}
    data["hf"] = {k: v for k, v in hf.items() if not isinstance(v, dict)} | (
        {"error": hf["error"]} if "error" in hf else {})
    data["definitions"] = {
        "copy_GBps": "device-to-device copy of 2 GiB, bytes read + written, median of 20",
        "matmul_tflops": "8192^3 bf16 torch.matmul on random data, median of 20",
        "decode_b1.tok_s": "(new tokens - 1) / time after the first token, one request",
        "decode_b1.roofline_tok_s": "copy_GBps / weight_bytes (all parameters, bf16)",
        "decode_cN.tok_s": "output tokens / wall time of the whole run (prefill included), N requests at once",
        "decode_cN.roofline_tok_s": "decode-only bound: N / max((weight bytes + N x KV bytes at the mean "
                                    "context) / copy_GBps, 2 x params x N / matmul peak); the measured tok_s "
                                    "also pays the prompts' prefill, so its fraction understates decode",
        "prefill.mfu": "tok_s * 2 * params / matmul peak (the issue's definition)",
        "prefill.mfu_executed": "tok_s * 2 * (params - embedding - LM head) / matmul peak: the projections "
                                "a prompt token actually goes through (attention FLOPs not counted)",
        "lookahead": "decode steps launched before the host saw the previous step's tokens (greedy)"}
    data["machine"] = report.machine_info()
    out = report.write_json(data, args.json, f"roofline-{slug}.json")
    png = out.with_suffix(".png")
    groups = {"b1": {"native": data["decode_b1"]["tok_s"], "roofline": roof_b1}}
    if data["decode_b1"]["hf_tok_s"]:
        groups["b1"]["hf"] = data["decode_b1"]["hf_tok_s"]
    for c in concurrencies:
        groups[f"c{c}"] = {"native": data[f"decode_c{c}"]["tok_s"], "roofline": data[f"decode_c{c}"]["roofline_tok_s"]}
        if data[f"decode_c{c}"]["hf_tok_s"]:
            groups[f"c{c}"]["hf"] = data[f"decode_c{c}"]["hf_tok_s"]
    pf = data.get("prefill_2048") or data[f"prefill_{args.prefill_len}"]
    report.bar_plot(groups, f"{args.model} bf16 on {gpu}: decode output tok/s ({args.input_len} in / "
                    f"{args.output_len} out)\nb1 = {data['decode_b1']['roofline_frac']:.0%} of roofline; "
                    f"prefill {args.prefill_len}: {pf['tok_s']:.0f} tok/s, MFU {pf['mfu']:.0%}",
                    "output tokens/s", png)
    _print_summary(data, concurrencies)
    print(f"wrote {out} and {png}")
    return 0


def _print_summary(data: dict, concurrencies: list[int]) -> None:
    b1 = data["decode_b1"]
    print(f"device {data['device']}: copy {data['copy_GBps']:.0f} GB/s, matmul {data['matmul_tflops']:.0f} TFLOP/s")
    print(f"decode b1: {b1['tok_s']:.1f} tok/s = {b1['roofline_frac']:.1%} of roofline {b1['roofline_tok_s']:.1f}"
          f" (hf {b1['hf_tok_s'] or float('nan'):.1f})")
    for c in concurrencies:
        d = data[f"decode_c{c}"]
        print(f"decode c{c}: {d['tok_s']:.0f} tok/s (hf {d['hf_tok_s'] or float('nan'):.0f}, "
              f"x{d['vs_hf'] or float('nan'):.2f}; {d['roofline_frac']:.0%} of the decode-only bound "
              f"{d['roofline_tok_s']:.0f})")
    for k, v in data.items():
        if k.startswith("prefill_"):
            print(f"{k}: {v['tok_s']:.0f} tok/s, MFU {v['mfu']:.1%} (executed projections only: "
                  f"{v['mfu_executed']:.1%})")
    print(f"graphs vs eager: {data['graphs_vs_eager']}")
