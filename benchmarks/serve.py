"""`tessera bench serve`: a serving benchmark against any OpenAI-compatible HTTP server (tessera,
`vllm serve`, ...), in the spirit of vLLM's `vllm bench serve`.

Every request streams (`stream_options.include_usage`), so per request we measure
  TTFT  time from sending to the first chunk that carries output text,
  ITL   every gap between two consecutive output chunks,
  TPOT  (e2e - ttft) / (output_tokens - 1),
  E2E   time from sending to `data: [DONE]`,
and over the run the request and output-token throughput, and goodput (requests per second that
completed and met every `--slo` bound). A request fails on an HTTP error, a transport error, a stream
without `data: [DONE]`, or a stream without output.

Load shapes: `--request-rate inf` sends everything at once (bounded by `--concurrency` if given), a
finite rate sends at fixed intervals or, with `--poisson`, exponential ones; `--concurrency C` caps the
requests in flight.

Prompts are synthetic: random common English words, each a single token in typical BPE vocabularies,
so the prompt length is controlled to the token. The number of words is calibrated against
`usage.prompt_tokens` of the server itself (chat template and special tokens included), so
`--input-len` is the prompt length the server actually sees; the mean measured prompt length is
reported as `mean_prompt_tokens`.

`--compare native,vllm` starts `tessera serve` and `vllm serve` one after the other on this machine and
runs the same workload against each (see benchmarks/serve_compare.py).

This module holds the options and the run; one request and the prompts are in
benchmarks/serve_request.py, the statistics, printout and plot in benchmarks/serve_summary.py."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time

from benchmarks.serve_request import (
    RequestResult,
    auth_headers,
    build_body,
    calibrate_words,
    make_prompts,
    normalize_base_url,
    resolve_model,
    send_request,
)
from benchmarks.serve_summary import plot_summary, print_summary, summarize

SLO_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")


# ----------------------------------------------------------------------------------------------------
# Arguments


def _rate(value: str) -> float:
    if value.strip().lower() in ("inf", "infinity", "max"):
        return math.inf
    rate = float(value)
    if rate <= 0:
        raise argparse.ArgumentTypeError("request rate must be > 0 or 'inf'")
    return rate


def parse_slo(text: str | None) -> dict[str, float]:
    """`ttft_ms=500,tpot_ms=50` -> {"ttft_ms": 500.0, "tpot_ms": 50.0}."""
    slo: dict[str, float] = {}
    if not text:
        return slo
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"bad --slo entry {part!r}; expected KEY=MS with KEY one of {', '.join(SLO_KEYS)}")
        slo[key] = float(value)
    return slo


def add_workload_args(p: argparse.ArgumentParser) -> None:
    """Workload options shared by `bench serve` and its `--compare` mode."""
    p.add_argument("--endpoint", choices=("chat", "completions"), default="completions",
                   help="/v1/chat/completions or /v1/completions (default)")
    p.add_argument("--request-rate", type=_rate, default=math.inf,
                   help="requests per second, or 'inf' (default) to send all at once")
    p.add_argument("--poisson", action="store_true",
                   help="exponential inter-arrival times at --request-rate instead of fixed intervals")
    p.add_argument("--concurrency", type=int, default=None, help="most requests in flight at once")
    p.add_argument("--num-requests", type=int, default=64, help="measured requests (default 64)")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens per request (default 128)")
    p.add_argument("--output-len", type=int, default=128, help="output tokens per request (default 128)")
    p.add_argument("--ignore-eos", dest="ignore_eos", action="store_true", default=True,
                   help="send ignore_eos and min_tokens so every request yields --output-len tokens (default)")
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false")
    p.add_argument("--slo", default=None, help="goodput bounds, e.g. ttft_ms=1000,tpot_ms=100 (also e2e_ms)")
    p.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests sent first (default 2)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt generator and arrival times")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serving benchmark against an OpenAI-compatible server (TTFT/TPOT/ITL, goodput)")
    p.add_argument("--base-url", default=None, help="server root, e.g. http://127.0.0.1:8000 (with or without /v1)")
    p.add_argument("--model", default=None, help="model name (default: the first one in /v1/models)")
    add_workload_args(p)
    p.add_argument("--json", default=None,
                   help="output JSON (default benchmarks/results/serve.json); the PNG is written next to it")
    p.add_argument("--compare", default=None, metavar="native,vllm",
                   help="start each server in turn on this machine and compare them (ignores --base-url)")
    from benchmarks import serve_compare

    serve_compare.add_compare_args(p)
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------------
# The run


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


async def run_benchmark(base_url: str, *, model: str | None = None, endpoint: str = "completions",
                        request_rate: float = math.inf, poisson: bool = False,
                        concurrency: int | None = None, num_requests: int = 64, input_len: int = 128,
                        output_len: int = 128, ignore_eos: bool = True, slo: dict | None = None,
                        api_key: str | None = None, warmup: int = 2, timeout: float = 600.0,
                        temperature: float = 0.0, seed: int = 0, progress: bool = True) -> dict:
    """Run one workload and return the summary (see `serve_summary.summarize`) plus `config`."""
    import httpx

    slo = slo or {}
    base = normalize_base_url(base_url)
    headers = auth_headers(api_key)
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    conns = max(concurrency or num_requests, 1) + 4
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        if model is None:
            model = await resolve_model(client, base, headers)
        words, calib = await calibrate_words(client, base, endpoint, model, input_len, headers, timeout, seed)
        prompts = make_prompts(num_requests + warmup, words, seed)
        for i in range(warmup):  # unmeasured; short outputs so they cost little
            body = build_body(endpoint, model, prompts[num_requests + i], min(output_len, 16), ignore_eos,
                              temperature)
            await send_request(client, base + path, body, headers, timeout)

        rng = random.Random(seed + 1)
        sem = asyncio.Semaphore(concurrency) if concurrency else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_requests, desc=f"bench serve {endpoint}", unit="req")

        async def one(prompt: str) -> RequestResult:
            body = build_body(endpoint, model, prompt, output_len, ignore_eos, temperature)
            if sem is None:
                r = await send_request(client, base + path, body, headers, timeout)
            else:
                async with sem:
                    r = await send_request(client, base + path, body, headers, timeout)
            if bar is not None:
                bar.update(1)
                if not r.ok:
                    bar.set_postfix_str(f"failed: {r.error[:60] if r.error else ''}")
            return r

        load_start = _load_avg()
        tasks = []
        t0 = time.perf_counter()
        for i, prompt in enumerate(prompts[:num_requests]):
            tasks.append(asyncio.create_task(one(prompt)))
            if math.isfinite(request_rate) and i < num_requests - 1:
                gap = rng.expovariate(request_rate) if poisson else 1.0 / request_rate
                await asyncio.sleep(gap)
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
        if bar is not None:
            bar.close()

    summary = summarize(results, duration, slo)
    # The machine may be shared: its load during the run says how far the figures can be trusted.
    summary["load_avg_1m"] = {"start": load_start, "end": _load_avg(), "cpu_count": os.cpu_count()}
    summary["config"] = {
        "base_url": base, "model": model, "endpoint": endpoint,
        "request_rate": "inf" if not math.isfinite(request_rate) else request_rate,
        "poisson": poisson, "concurrency": concurrency, "num_requests": num_requests,
        "input_len": input_len, "output_len": output_len, "ignore_eos": ignore_eos, "slo": slo,
        "warmup": warmup, "temperature": temperature, "seed": seed, "prompt_words": words,
        "prompt_calibration": calib,
    }
    return summary


def workload_kwargs(args: argparse.Namespace) -> dict:
    return dict(endpoint=args.endpoint, request_rate=args.request_rate, poisson=args.poisson,
                concurrency=args.concurrency, num_requests=args.num_requests, input_len=args.input_len,
                output_len=args.output_len, ignore_eos=args.ignore_eos, slo=parse_slo(args.slo),
                api_key=args.api_key, warmup=args.warmup, timeout=args.timeout,
                temperature=args.temperature, seed=args.seed, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    if args.num_requests < 1 or args.input_len < 1 or args.output_len < 1:
        raise ValueError("--num-requests, --input-len and --output-len must be >= 1")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    parse_slo(args.slo)  # validate before any work
    if args.compare:
        from benchmarks import serve_compare

        return serve_compare.run_compare(args)
    if not args.base_url:
        raise ValueError("--base-url is required (or use --compare native,vllm)")
    import httpx

    from benchmarks.report import machine_info, write_json

    try:
        summary = asyncio.run(run_benchmark(args.base_url, model=args.model, **workload_kwargs(args)))
    except (RuntimeError, httpx.HTTPError, OSError) as exc:
        print(f"tessera bench serve: cannot benchmark {args.base_url}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    summary["machine"] = machine_info()
    out = write_json(summary, args.json, "serve.json")
    png = plot_summary(summary, f"bench serve {summary['config']['model']} ({args.endpoint}, "
                                f"c={args.concurrency or 'inf'}, {args.input_len} in / {args.output_len} out)",
                       out.with_suffix(".png"))
    print_summary(summary)
    print(f"wrote {out} and {png}")
    return 0 if summary["failed"] == 0 else 1
