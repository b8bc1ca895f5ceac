"""`tessera eval fidelity`: a modified engine (plugins) against the unmodified one on held-out text
(DESIGN.md section 9). One variant from --plugins/--plugin-config/--plugin-option, or many from
--variants FILE.yaml ({label: {plugin: {options}}}), all against one reference run."""

from __future__ import annotations

import argparse
import sys
import time

from server.commands.plugin_args import add_plugin_args, plugin_specs


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="quality evaluations")
    sub = p.add_subparsers(dest="eval_kind", required=True)
    f = sub.add_parser("fidelity", help="KL / top-1 / greedy match of a plugin config vs the unmodified engine",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__)
    f.add_argument("--model", default=None, help="registered name, HF directory, .gguf (default: SmolLM2-135M)")
    add_plugin_args(f)
    f.add_argument("--variants", default=None, help="YAML {label: {plugin: {options}}} evaluated side by side")
    f.add_argument("--split", default="heldout", choices=["heldout", "calibration"])
    f.add_argument("--num-texts", type=int, default=8, help="teacher-forced sequences (one topic each)")
    f.add_argument("--text-tokens", type=int, default=256, help="tokens per teacher-forced sequence")
    f.add_argument("--num-prompts", type=int, default=8, help="prompts for greedy continuations")
    f.add_argument("--prompt-tokens", type=int, default=64, help="tokens per greedy prompt")
    f.add_argument("--continuation-tokens", type=int, default=32, help="greedy tokens compared per prompt")
    f.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    f.add_argument("--device", default="cpu")
    f.add_argument("--json", default=None, help="output JSON path")
    f.add_argument("--no-progress", dest="progress", action="store_false")
    f.set_defaults(func=run)


def load_variants(path: str) -> dict[str, tuple[tuple[str, dict], ...]]:
    from pathlib import Path

    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path} must map variant labels to {{plugin: {{options}}}}")
    out = {}
    for label, plugins in data.items():
        if not isinstance(plugins, dict):
            raise ValueError(f"variant {label!r} must map plugin names to option mappings")
        out[str(label)] = tuple((name, dict(opts or {})) for name, opts in plugins.items())
    return out


def build_engine(model: str | None, dtype: str, device: str, plugins: tuple, max_len: int):
    from engine.config import CacheConfig, DeviceConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(
        model=ModelConfig(dtype=dtype, **({"model": model} if model else {})),
        cache=CacheConfig(enable_prefix_caching=False, kv_cache_memory_bytes=256 << 20),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=max(512, max_len)),
        device=DeviceConfig(device=device), plugins=plugins))


def run(args) -> int:
    import gc

    from benchmarks.report import machine_info, write_json
    from engine.calibration_text import token_windows
    from engine.fidelity import FidelityData, FidelityEvaluator, kv_cache_figures

    if args.variants:
        if args.plugins or args.plugin_config or args.plugin_option:
            raise ValueError("--variants replaces --plugins/--plugin-config/--plugin-option; give one or the other")
        variants = load_variants(args.variants)
    else:
        specs = plugin_specs(args)
        variants = {"+".join(n for n, _ in specs) or "unmodified": specs}
    t0 = time.perf_counter()
    ref = build_engine(args.model, args.dtype, args.device, (), args.text_tokens)
    windows = token_windows(ref.tokenizer, args.split, args.num_texts + args.num_prompts, args.text_tokens)
    data = FidelityData(windows[:args.num_texts],
                        [w[:args.prompt_tokens] for w in windows[args.num_texts:]], args.continuation_tokens)
    evaluator = FidelityEvaluator(ref, data, progress=args.progress)
    results = {"unmodified": {**kv_cache_figures(ref), "plugins": {}}}
    del ref
    gc.collect()
    for label, plugins in variants.items():
        engine = build_engine(args.model, args.dtype, args.device, plugins, args.text_tokens)
        report = evaluator.evaluate(engine)
        results[label] = {**report.to_dict(), **kv_cache_figures(engine), "plugins": dict(plugins)}
        print(f"{label}: kl_mean={report.kl_mean:.5f} top1={report.top1_agreement:.4f} "
              f"match_len={report.match_len_mean:.1f} bits={results[label]['kv_bits_mean']:.2f} "
              f"bytes/token={results[label]['kv_bytes_per_token']:.0f}", file=sys.stderr)
        del engine
        gc.collect()
    base_bytes = results["unmodified"]["kv_bytes_per_token"]
    for r in results.values():
        r["kv_bytes_ratio"] = r["kv_bytes_per_token"] / base_bytes
    out = {"kind": "fidelity", "model": args.model or "smollm2-135m-instruct", "split": args.split,
           "num_texts": args.num_texts, "text_tokens": args.text_tokens, "num_prompts": args.num_prompts,
           "prompt_tokens": args.prompt_tokens, "continuation_tokens": args.continuation_tokens,
           "dtype": args.dtype, "elapsed_s": time.perf_counter() - t0, "machine": machine_info(),
           "variants": results}
    if len(variants) == 1:
        out.update({k: v for k, v in next(iter(results[label] for label in variants)).items() if k != "plugins"})
    path = write_json(out, args.json, "fidelity.json")
    print(f"wrote {path}", file=sys.stderr)
    return 0
