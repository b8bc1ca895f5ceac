"""`tessera bench prefix`: what prefix caching saves on the native engine.

Per repeat: request A = a fresh random --prefix-len prefix + its own suffix, then request B = the same
prefix + a different suffix, both with max_tokens=1, on an engine with prefix caching on; then the same
B on a second engine with prefix caching off (CacheConfig(enable_prefix_caching=False)), in the same
run. Reported: time to first token (prefill) of each, medians over --repeats, and the engine's prefix
cache counters (tokens) around B. A fresh prefix per repeat keeps A cold; distinct suffixes make sure
only the prefix can hit. Each engine gets one untimed warmup request of the same length first.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

from benchmarks import report
from benchmarks.baselines.launcher import OFFLINE_ENV
from benchmarks.throughput import build_native_engine
from benchmarks.workload import kv_bytes_per_token, random_prompts

COUNTERS = ("prefix_cache_hits", "prefix_cache_queries")


def register(subparsers) -> None:
    p = subparsers.add_parser("prefix", help="prefix caching: time to first token with a shared prefix",
                              description=__doc__)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="registered name, HF directory, .gguf file or synthetic:<shape>")
    p.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--prefix-len", type=int, default=512, help="shared prefix tokens")
    p.add_argument("--suffix-len", type=int, default=32, help="distinct suffix tokens per request")
    p.add_argument("--repeats", type=int, default=5, help="median over this many repeats")
    p.add_argument("--block-size", type=int, default=16, help="KV cache block size (tokens)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="native per-step token budget (default: prefix+suffix, one-step prefill)")
    p.add_argument("--json", default=None, help="output JSON (PNG next to it); default benchmarks/results/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.set_defaults(func=run)


def time_to_first_token(eng, request_id: str, prompt: list[int]) -> float:
    """Adds one max_tokens=1 request and steps until it finishes; seconds until its first token."""
    from engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1)
    t0 = time.monotonic()
    eng.add_request(request_id, prompt, params)
    first = None
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.request_id != request_id:
                continue
            if out.error:
                raise RuntimeError(f"request {request_id} failed: {out.error}")
            if first is None and out.outputs[0].token_ids:
                first = out.first_token_time or time.monotonic()
    if first is None:
        raise RuntimeError(f"request {request_id} finished without a token")
    return first - t0


def counters(eng) -> dict:
    s = eng.stats()
    return {k: int(getattr(s, k)) for k in COUNTERS}


def make_prompts(tokenizer, vocab: int, args) -> tuple[list, list]:
    """Per repeat (prefix, suffix A, suffix B) drawn from one seeded stream, plus warmup prompts."""
    n = args.repeats
    prefixes = random_prompts(tokenizer, vocab, n, args.prefix_len, args.seed)
    suffixes = random_prompts(tokenizer, vocab, 2 * n, args.suffix_len, args.seed + 1)
    rounds = [(prefixes[i], suffixes[2 * i], suffixes[2 * i + 1]) for i in range(n)]
    for prefix, a, b in rounds:  # suffixes must differ in the block right after the prefix
        if a[0] == b[0]:
            b[0] = next((t for t in prefix + a + b if t != a[0]), b[0])
    warm = random_prompts(tokenizer, vocab, 2, args.prefix_len + args.suffix_len, args.seed + 2)
    return rounds, warm


def run(args) -> int:
    from engine.loader.model_registry import resolve_model
    from engine.loader.tokenizer import Tokenizer

    for name in ("prefix_len", "suffix_len", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    resolved = resolve_model(args.model, progress=args.progress)
    tokenizer = Tokenizer(resolved.tokenizer_dir)
    rounds, warm = make_prompts(tokenizer, resolved.arch.vocab_size, args)
    seq_len = args.prefix_len + args.suffix_len
    budget = args.max_num_batched_tokens or seq_len
    kv_bytes = max(64 << 20, int(kv_bytes_per_token(resolved.arch, args.dtype) * (seq_len + args.block_size)
                                 * (2 * args.repeats + 4) * 1.25))

    records = []
    engines = {}
    try:
        from engine.config import CacheConfig  # noqa: F401  (fail early with the engine's import error)

        for cached in (True, False):
            eng = build_native_engine(args.model, args.dtype, max_num_seqs=4, max_num_batched_tokens=budget,
                                      max_model_len=seq_len + 8, kv_cache_bytes=kv_bytes,
                                      prefix_caching=cached, block_size=args.block_size)
            time_to_first_token(eng, f"warmup-{int(cached)}", warm[int(cached)])
            engines[cached] = eng
        records = _measure(engines, rounds, args)
    finally:
        for eng in engines.values():
            close = getattr(eng, "close", None)
            if close:
                close()
        engines.clear()
        gc.collect()

    block = args.block_size
    expected = (args.prefix_len // block) * block
    med = {k: statistics.median(r[k] for r in records)
           for k in ("first_ttft_s", "second_ttft_s", "second_no_cache_ttft_s")}
    hits = [r["second_hit_tokens"] for r in records]
    results = {
        "first_request_ttft_s": med["first_ttft_s"],
        "second_request_ttft_s": med["second_ttft_s"],
        "second_request_no_cache_ttft_s": med["second_no_cache_ttft_s"],
        "speedup_vs_first": med["first_ttft_s"] / med["second_ttft_s"],
        "speedup_vs_no_cache": med["second_no_cache_ttft_s"] / med["second_ttft_s"],
        "prefix_cache": {"before": records[0]["before_second"], "after": records[0]["after_second"],
                         "second_request_hit_tokens": statistics.median(hits),
                         "expected_hit_tokens": expected,
                         "all_repeats_hit_expected": all(h == expected for h in hits),
                         "first_request_hit_tokens": max(r["first_hit_tokens"] for r in records)},
        "repeats": records,
    }
    data = {"workload": {"model": resolved.name, "dtype": args.dtype, "prefix_len": args.prefix_len,
                         "suffix_len": args.suffix_len, "repeats": args.repeats, "block_size": block,
                         "max_num_batched_tokens": budget, "max_tokens": 1, "seed": args.seed,
                         "timing": "time to first token (prefill), median over repeats"},
            "results": results, "machine": report.machine_info()}
    device = "cuda" if _cuda() else "cpu"
    out = report.write_json(data, args.json, f"prefix-{device}.json")
    png = out.with_suffix(".png")
    ms = {"A: cold prefix": med["first_ttft_s"] * 1e3, "B: prefix cached": med["second_ttft_s"] * 1e3,
          "B: caching off": med["second_no_cache_ttft_s"] * 1e3}
    report.bar_plot({f"{args.prefix_len}+{args.suffix_len} tokens": ms},
                    f"{resolved.name}: time to first token, shared {args.prefix_len}-token prefix ({device})",
                    "TTFT (ms, median)", png)
    print(f"first request (cold):        {ms['A: cold prefix']:8.1f} ms")
    print(f"second request (cached):     {ms['B: prefix cached']:8.1f} ms  "
          f"({results['speedup_vs_first']:.2f}x faster than the first)")
    print(f"second request, caching off: {ms['B: caching off']:8.1f} ms  "
          f"(caching gives {results['speedup_vs_no_cache']:.2f}x)")
    print(f"prefix cache hits on the second request: {results['prefix_cache']['second_request_hit_tokens']} "
          f"tokens (expected {expected}); counters before {results['prefix_cache']['before']}, "
          f"after {results['prefix_cache']['after']}")
    print(f"wrote {out} and {png}")
    return 0


def _measure(engines: dict, rounds: list, args) -> list[dict]:
    from tqdm import tqdm

    records = []
    cached, uncached = engines[True], engines[False]
    for i, (prefix, suf_a, suf_b) in enumerate(tqdm(rounds, desc="prefix repeats", unit="rep",
                                                     disable=not args.progress, file=sys.stderr)):
        tag = f"{time.monotonic_ns()}-{i}"
        c0 = counters(cached)
        first = time_to_first_token(cached, f"a-{tag}", prefix + suf_a)
        c1 = counters(cached)
        second = time_to_first_token(cached, f"b-{tag}", prefix + suf_b)
        c2 = counters(cached)
        no_cache = time_to_first_token(uncached, f"b-nocache-{tag}", prefix + suf_b)
        records.append({"first_ttft_s": first, "second_ttft_s": second, "second_no_cache_ttft_s": no_cache,
                        "first_hit_tokens": c1["prefix_cache_hits"] - c0["prefix_cache_hits"],
                        "second_hit_tokens": c2["prefix_cache_hits"] - c1["prefix_cache_hits"],
                        "before_second": c1, "after_second": c2})
    return records


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
