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
runs the same workload against each (see benchmarks/serve_compare.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Common English words that are one token each (with their leading space) in the GPT-2/Llama/SmolLM
# style byte-level BPE vocabularies; calibration absorbs the cases where that does not hold.
WORDS = (
    "the of and to in is was for on as with by at from his her that this which have had are not "
    "but be or an they one you all were we there their been has when who more will would if out so "
    "said what up its about into than them can only other new some time could these two may then do "
    "first any my now such like our over man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people how too "
    "little state good very make world still own see men work long get here between both life being "
    "under never day same another know while last might us great old year off come since against go "
    "came right used take three house water city room light road tree river stone music paper table "
    "window garden market school family friend country morning evening summer winter forest"
).split()

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
# One request


@dataclass
class RequestResult:
    ok: bool = False
    error: str | None = None
    status: int | None = None
    start: float = 0.0  # perf_counter at send
    ttft: float | None = None  # seconds
    e2e: float | None = None  # seconds
    itl: list[float] = field(default_factory=list)  # seconds
    output_tokens: int = 0
    prompt_tokens: int | None = None
    chunks: int = 0
    done: bool = False
    text_len: int = 0

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def normalize_base_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def build_body(endpoint: str, model: str, prompt: str, max_tokens: int, ignore_eos: bool,
               temperature: float = 0.0, stream: bool = True) -> dict:
    body: dict = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        # Extra sampling fields understood by vLLM and tessera: generate exactly max_tokens tokens.
        body["ignore_eos"] = True
        body["min_tokens"] = max_tokens
    return body


def _chunk_text(choice: dict) -> str:
    if "delta" in choice:
        delta = choice.get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "") + (
            delta.get("reasoning") or "") + ("x" if delta.get("tool_calls") else "")
    return choice.get("text") or ""


def _error_text(status: int, body: bytes) -> str:
    try:
        msg = json.loads(body)["error"]["message"]
    except Exception:  # noqa: BLE001 - anything unparsable is shown raw
        msg = body[:200].decode("utf-8", "replace")
    return f"HTTP {status}: {msg}"


async def send_request(client, url: str, body: dict, headers: dict, timeout: float) -> RequestResult:
    """Stream one request and time it. Never raises: failures come back as ok=False."""
    import httpx

    res = RequestResult()
    res.start = time.perf_counter()
    last = res.start
    try:
        async with client.stream("POST", url, json=body, headers=headers, timeout=timeout) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                res.error = _error_text(resp.status_code, await resp.aread())
                return res
            async for line in resp.aiter_lines():
                line = line.strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    res.done = True
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk and not chunk.get("choices"):
                    err = chunk["error"]
                    res.error = f"stream error: {err.get('message') if isinstance(err, dict) else err}"
                    return res
                usage = chunk.get("usage")
                if usage:
                    res.output_tokens = int(usage.get("completion_tokens") or 0)
                    res.prompt_tokens = usage.get("prompt_tokens")
                text = "".join(_chunk_text(c) for c in chunk.get("choices") or [])
                if not text:
                    continue
                res.chunks += 1
                res.text_len += len(text)
                if res.ttft is None:
                    res.ttft = now - res.start
                else:
                    res.itl.append(now - last)
                last = now
        res.e2e = time.perf_counter() - res.start
    except (httpx.HTTPError, OSError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return res
    if not res.done:
        res.error = "stream ended without data: [DONE]"
    elif res.chunks == 0:
        res.error = "empty output"
    else:
        if res.output_tokens <= 0:  # server sent no usage: one token per chunk is the best estimate
            res.output_tokens = res.chunks
        res.ok = True
    return res


# ----------------------------------------------------------------------------------------------------
# Prompts


def random_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(n, 1)))


async def _prompt_tokens(client, base: str, endpoint: str, model: str, prompt: str, headers: dict,
                         timeout: float) -> int | None:
    """usage.prompt_tokens of a 1-token non-streamed request, or None if the server did not say."""
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    body = build_body(endpoint, model, prompt, 1, ignore_eos=False, stream=False)
    resp = await client.post(base + path, json=body, headers=headers, timeout=timeout)
    if resp.status_code != 200:
        raise RuntimeError(f"calibration request failed: {_error_text(resp.status_code, resp.content)}")
    usage = resp.json().get("usage") or {}
    n = usage.get("prompt_tokens")
    return int(n) if n is not None else None


async def calibrate_words(client, base: str, endpoint: str, model: str, input_len: int, headers: dict,
                          timeout: float, seed: int) -> tuple[int, dict]:
    """How many words make a prompt of input_len tokens as the server counts them.

    Two probes give tokens-per-word and the fixed overhead (template, BOS); a few more correct the
    estimate until a probe lands on input_len (or stops improving)."""
    rng = random.Random(seed ^ 0x5EED)
    info: dict = {"method": "usage.prompt_tokens", "probes": []}

    async def probe(n_words: int) -> int | None:
        n = await _prompt_tokens(client, base, endpoint, model, random_words(rng, n_words), headers, timeout)
        info["probes"].append([n_words, n])
        return n

    a_words, b_words = 8, max(16, min(input_len, 64))
    a, b = await probe(a_words), await probe(b_words)
    if a is None or b is None or b <= a:
        info["method"] = "heuristic (server reports no usage.prompt_tokens): one token per word"
        return max(input_len, 1), info
    per_word = (b - a) / (b_words - a_words)
    overhead = a - per_word * a_words
    info["tokens_per_word"] = round(per_word, 4)
    info["overhead_tokens"] = round(overhead, 2)
    words = max(1, round((input_len - overhead) / per_word))
    best = (math.inf, words)
    for _ in range(4):
        n = await probe(words)
        if n is None:
            break
        err = n - input_len
        if abs(err) < best[0]:
            best = (abs(err), words)
        if err == 0:
            break
        step = round(err / per_word) or (1 if err > 0 else -1)
        words = max(1, words - step)
    info["words"] = best[1]
    return best[1], info


def make_prompts(n: int, words: int, seed: int) -> list[str]:
    """n different prompts (so no prefix cache makes the measurement cheaper than real traffic)."""
    rng = random.Random(seed)
    return [random_words(rng, words) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------
# The run


def _stats(values: list[float], scale: float = 1000.0) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p99": None, "std": None, "min": None, "max": None}
    xs = sorted(v * scale for v in values)

    def pct(q: float) -> float:  # linear interpolation, as numpy.percentile's default
        k = (len(xs) - 1) * q / 100.0
        lo, hi = math.floor(k), math.ceil(k)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    return {"mean": round(statistics.fmean(xs), 3), "p50": round(pct(50), 3), "p99": round(pct(99), 3),
            "std": round(statistics.pstdev(xs), 3), "min": round(xs[0], 3), "max": round(xs[-1], 3)}


def meets_slo(r: RequestResult, slo: dict[str, float]) -> bool:
    if not r.ok:
        return False
    checks = {"ttft_ms": r.ttft, "tpot_ms": r.tpot if r.tpot is not None else 0.0, "e2e_ms": r.e2e}
    return all(checks[k] is not None and checks[k] * 1000.0 <= bound for k, bound in slo.items())


def summarize(results: list[RequestResult], duration: float, slo: dict[str, float]) -> dict:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_counts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    in_tokens = sum(prompt_counts)
    good = sum(1 for r in ok if meets_slo(r, slo))
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "unknown")[:200]
            errors[key] = errors.get(key, 0) + 1
    d = max(duration, 1e-9)
    return {
        "ttft_ms": _stats([r.ttft for r in ok]),
        "tpot_ms": _stats([r.tpot for r in ok if r.tpot is not None]),
        "itl_ms": _stats([g for r in ok for g in r.itl]),
        "e2e_ms": _stats([r.e2e for r in ok]),
        "request_throughput": round(len(ok) / d, 4),
        "output_tok_s": round(out_tokens / d, 3),
        "total_tok_s": round((out_tokens + in_tokens) / d, 3),
        "goodput": round(good / d, 4),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": round(duration, 3),
        "total_output_tokens": out_tokens,
        "total_input_tokens": in_tokens,
        "mean_prompt_tokens": round(statistics.fmean(prompt_counts), 2) if prompt_counts else None,
        "mean_output_tokens": round(out_tokens / len(ok), 2) if ok else None,
        "errors": errors,
    }


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


async def resolve_model(client, base: str, headers: dict) -> str:
    resp = await client.get(base + "/v1/models", headers=headers, timeout=30.0)
    if resp.status_code != 200:
        raise RuntimeError(f"GET /v1/models failed: {_error_text(resp.status_code, resp.content)}")
    data = resp.json().get("data") or []
    if not data:
        raise RuntimeError("GET /v1/models lists no model; pass --model")
    return data[0]["id"]


async def run_benchmark(base_url: str, *, model: str | None = None, endpoint: str = "completions",
                        request_rate: float = math.inf, poisson: bool = False,
                        concurrency: int | None = None, num_requests: int = 64, input_len: int = 128,
                        output_len: int = 128, ignore_eos: bool = True, slo: dict | None = None,
                        api_key: str | None = None, warmup: int = 2, timeout: float = 600.0,
                        temperature: float = 0.0, seed: int = 0, progress: bool = True) -> dict:
    """Run one workload and return the summary (see `summarize`) plus `config`."""
    import httpx

    slo = slo or {}
    base = normalize_base_url(base_url)
    headers = _headers(api_key)
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


def plot_summary(summary: dict, title: str, path: Path) -> Path:
    from benchmarks.report import bar_plot

    groups = {name: {k: summary[key][k] or 0.0 for k in ("mean", "p50", "p99")}
              for name, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms"))}
    return bar_plot(groups, title, "milliseconds", path)


def print_summary(s: dict, label: str = "") -> None:
    head = f"==== serving benchmark {label}".rstrip() + " ===="
    print(head)
    load = s.get("load_avg_1m") or {}
    print(f"completed {s['completed']}  failed {s['failed']}  duration {s['duration_s']:.1f} s   "
          f"load avg {load.get('start')} -> {load.get('end')} on {load.get('cpu_count')} CPUs")
    print(f"request throughput {s['request_throughput']:.3f} req/s   output {s['output_tok_s']:.1f} tok/s   "
          f"goodput {s['goodput']:.3f} req/s")
    print(f"prompt tokens (mean, server-counted) {s['mean_prompt_tokens']}   output tokens (mean) "
          f"{s['mean_output_tokens']}")
    for name, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms")):
        st = s[key]
        if st["mean"] is None:
            print(f"{name:5s} -")
        else:
            print(f"{name:5s} mean {st['mean']:9.2f} ms   p50 {st['p50']:9.2f} ms   p99 {st['p99']:9.2f} ms")
    for err, n in list(s.get("errors", {}).items())[:5]:
        print(f"  {n} x {err}")


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
