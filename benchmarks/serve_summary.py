"""The summary side of `tessera bench serve`: per-request results (`RequestResult`) reduced to latency
percentiles, throughput and goodput, then printed and plotted."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from benchmarks.serve_request import RequestResult


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
