"""`tessera bench capacity`: the same KV cache memory budget, unquantized vs a kv_mixed_precision config,
with long prompts. Reports the blocks each cache gets, the most sequences each admitted at once (observed
in the running batch, and the ceiling the block count allows), and output throughput, side by side in one
run. Prompts are random token ids of exactly --input-len, greedy, exactly --output-len new tokens each."""

from __future__ import annotations

import sys
import time

from benchmarks import report
from benchmarks.workload import random_prompts


def register(subparsers) -> None:
    p = subparsers.add_parser("capacity", help="KV capacity and throughput: unquantized vs quantized cache",
                              description=__doc__)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--config", default="benchmarks/results/kv/smollm2-kivi-4bit.yaml",
                   help="kv_mixed_precision YAML (or a preset name: kv8, k8v4, kv4, ...)")
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--baseline-seqs", type=int, default=4,
                   help="the KV budget is what the unquantized cache needs for this many full sequences")
    p.add_argument("--num-requests", type=int, default=None, help="default: enough to fill the quantized cache")
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--json", default=None, help="output JSON (PNG next to it); default benchmarks/results/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def plugin_options(config: str) -> dict:
    from plugins.kv_mixed_precision.config import PRESETS

    return {"preset": config} if config in PRESETS else {"config": config}


def build(model: str, kv_bytes: int, max_len: int, batched: int, plugins: tuple):
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(
        model=ModelConfig(model=model, dtype="float32", max_model_len=max_len),
        cache=CacheConfig(kv_cache_memory_bytes=kv_bytes, enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=batched), plugins=plugins))


def run_variant(eng, prompts, output_len: int, progress: bool, desc: str) -> dict:
    from tqdm import tqdm

    from engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len, ignore_eos=True)
    # warmup on a short prompt: kernel builds and allocator growth are not timed
    eng.generate([prompts[0][:64]], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    for i, p in enumerate(prompts):
        eng.add_request(f"cap-{i}", p, params)
    max_running, out_tokens = 0, 0
    t0 = time.perf_counter()
    with tqdm(total=len(prompts) * output_len, desc=desc, unit="tok", disable=not progress, file=sys.stderr) as bar:
        while eng.has_unfinished_requests():
            for out in eng.step():
                n = len(out.outputs[0].delta_token_ids)
                out_tokens += n
                bar.update(n)
                if out.finished and out.error:
                    raise RuntimeError(f"request {out.request_id} failed: {out.error}")
            max_running = max(max_running, eng.stats().num_running)
    elapsed = time.perf_counter() - t0
    s = eng.stats()
    seq_blocks = -(-(len(prompts[0]) + output_len) // eng.kv.block_size)
    return {"num_blocks": eng.kv.num_blocks, "kv_bytes_per_block": eng.kv_bytes_per_block,
            "kv_bytes_per_token": eng.kv_bytes_per_block / eng.kv.block_size,
            "max_seqs_by_blocks": eng.kv.num_blocks // seq_blocks, "max_running_observed": max_running,
            "output_tokens": out_tokens, "elapsed_s": elapsed, "output_tok_s": out_tokens / elapsed,
            "num_preemptions": s.num_preemptions, "num_steps": s.num_steps}


def run(args) -> int:
    import gc

    from engine.fidelity import kv_cache_figures
    from engine.kv_spec import KVSpec
    from engine.loader.model_registry import resolve_model
    from engine.loader.tokenizer import Tokenizer

    if args.input_len < 1 or args.output_len < 1 or args.baseline_seqs < 1:
        raise ValueError("--input-len, --output-len and --baseline-seqs must be positive")
    resolved = resolve_model(args.model)
    arch = resolved.arch
    max_len = args.input_len + args.output_len
    bs = 16
    dense_block = arch.num_layers * KVSpec.dense(arch.num_kv_heads, arch.head_dim, __import__("torch").float32
                                                 ).page_bytes(bs)
    kv_bytes = args.baseline_seqs * -(-max_len // bs) * dense_block
    variants = {"unquantized": (), "kv_mixed_precision": (("kv_mixed_precision", plugin_options(args.config)),)}
    tok = Tokenizer(resolved.tokenizer_dir)
    results, n_req = {}, args.num_requests
    for label, plugins in variants.items():
        eng = build(args.model, kv_bytes, max_len, args.max_num_batched_tokens, plugins)
        if n_req is None:  # sized once, from the quantized cache's ceiling, and shared by both runs
            probe = build(args.model, kv_bytes, max_len, args.max_num_batched_tokens, variants["kv_mixed_precision"])
            n_req = max(args.baseline_seqs, probe.kv.num_blocks // -(-max_len // bs))
            del probe
        prompts = random_prompts(tok, arch.vocab_size, n_req, args.input_len, args.seed)
        results[label] = {**run_variant(eng, prompts, args.output_len, args.progress, label),
                          **kv_cache_figures(eng), "plugins": dict(plugins)}
        del eng
        gc.collect()
    base, quant = results["unquantized"], results["kv_mixed_precision"]
    ratios = {"admitted_seqs_ratio": quant["max_running_observed"] / base["max_running_observed"],
              "block_ratio": quant["num_blocks"] / base["num_blocks"],
              "output_throughput_ratio": quant["output_tok_s"] / base["output_tok_s"],
              "kv_bytes_per_token_ratio": quant["kv_bytes_per_token"] / base["kv_bytes_per_token"]}
    out = {"kind": "capacity", "model": args.model, "config": args.config, "input_len": args.input_len,
           "output_len": args.output_len, "kv_cache_memory_bytes": kv_bytes, "num_requests": n_req,
           "machine": report.machine_info(), "variants": results, "ratios": ratios}
    path = report.write_json(out, args.json, "kv-capacity.json")
    report.bar_plot({"max concurrent seqs": {k: v["max_running_observed"] for k, v in results.items()},
                     "output tok/s": {k: v["output_tok_s"] for k, v in results.items()}},
                    f"KV capacity at {kv_bytes / 2**20:.0f} MiB, {args.input_len}-token prompts", "value",
                    path.with_suffix(".png"))
    print(f"wrote {path}: {ratios}", file=sys.stderr)
    return 0
