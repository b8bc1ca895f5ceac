"""`tessera bench spec`: speculative decoding (plugin `spec_decode`) against the same engine without the
plugin, side by side in one process and one run, on the default model.

Workloads (output tokens per second, plugin on / plugin off, runs interleaved so load drift hits both):
- copy_b1: batch 1, greedy; each prompt asks the model to copy or lightly edit a given text or code,
  so the answer repeats the prompt. Proposers ngram and suffix; the better one is the headline.
- best_of_4: n = 4 samples at temperature 0.6 per prompt (short code and math answers and ordinary
  chat, the way best-of-N is used), batch of one request (4 sequences); proposer suffix, whose family
  index shares each sample's text with its siblings.
- chat_c64: 64 concurrent ordinary chat requests, greedy; plugin with its default settings (ngram,
  switched off above max_batch_size decoding requests). `--chat-repeats` ABBA repeats; the JSON also
  states the time the plugin's per-step hooks took (plugin_hook_ms_per_step) on the plugin side.
Every side-by-side workload runs its repeats in ABBA order (off,on then on,off ...); `speedup` is the
median of the per-repeat ratios, each repeat's figures are listed under `repeats`.
- judge: batch 1, greedy, draft proposer (layer-skipping self-draft of the target) on its own engine
  with the load governor out of the way (k drafts every step), so the sweep measures the judge itself;
  the lossless verifier and then the judge at each tau, each tau timed against plugin-off runs of the
  same prompts interleaved with it. Fidelity against the lossless output of the same prompts:
  kl_mean = mean over emitted tokens of KL(p_target || p_draft) of the drafts the judge accepted
  although they differ from the target's choice (0 for every other token), i.e. the divergence the
  relaxation lets through per token; match_len_mean = leading tokens identical to the lossless output;
  nll_delta = teacher-forced mean negative log-likelihood under the target of the judge's output minus
  that of the lossless output.
accept_len_mean is the mean number of tokens a verification step emits (accepted drafts + 1).
The prompts of every workload are in benchmarks/spec_prompts.py.
The machine is shared: figures are ratios measured in one run; timed sections leave out stalls in which
the process got no CPU at all (benchmarks/stall_clock.py; the JSON records how many seconds and the
load average)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.spec_prompts import BEST_OF_PROMPTS, CHAT_PROMPTS, COPY_PROMPTS
from benchmarks.stall_clock import StallClock


def register(subparsers) -> None:
    p = subparsers.add_parser("spec", help="speculative decoding: speed-up, accepted length, judge fidelity",
                              description=__doc__)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--workloads", default="copy_b1,best_of_4,chat_c64,judge")
    p.add_argument("--k", type=int, default=8, help="most drafts per step (ngram/suffix workloads)")
    p.add_argument("--copy-tokens", type=int, default=128)
    p.add_argument("--copy-prompts", type=int, default=4, help="prompts per repeat")
    p.add_argument("--best-of-prompts", type=int, default=4, help="prompts per repeat")
    p.add_argument("--best-of-tokens", type=int, default=128)
    p.add_argument("--chat-requests", type=int, default=64)
    p.add_argument("--chat-tokens", type=int, default=64)
    p.add_argument("--chat-repeats", type=int, default=6, help="interleaved (ABBA) timed runs per side")
    p.add_argument("--taus", default="0,0.5,1,2,3",
                   help="judge thresholds (comma-separated); the plugin's default tau is always added")
    p.add_argument("--judge-prompts", type=int, default=3)
    p.add_argument("--judge-tokens", type=int, default=48)
    p.add_argument("--judge-k", type=int, default=3)
    p.add_argument("--draft-layer-ratio", type=float, default=0.85,
                   help="fraction of the target's layers the self-draft keeps (first and last included)")
    p.add_argument("--draft-layers", default="", help="explicit self-draft layers, e.g. '0-20,29'")
    p.add_argument("--repeats", type=int, default=4,
                   help="interleaved (ABBA) timed runs per side; each repeat runs its own prompts")
    p.add_argument("--json", default=None, help="output JSON (PNG next to it); default benchmarks/results/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


# ---- engine driving ----------------------------------------------------------------------------
def _engine(model: str, plugins: tuple, prefix_caching: bool = True):
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine

    eng = LLMEngine(EngineConfig(model=ModelConfig(model=model, dtype="float32"),
                                 cache=CacheConfig(kv_cache_memory_bytes=512 << 20,
                                                   enable_prefix_caching=prefix_caching),
                                 scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512),
                                 plugins=plugins))
    eng.warmup()
    return eng


def _run(engine, prompts, params, options, desc: str, args) -> tuple[int, float, list]:
    """Runs every prompt to completion at once; returns (output tokens, seconds without stalls,
    outputs in order)."""
    from tqdm import tqdm

    ids = [f"{desc}-{i}-{time.monotonic_ns()}" for i in range(len(prompts))]
    results = {}
    budget = len(prompts) * params.n * (params.max_tokens or 0)
    clock = args.clock
    with tqdm(total=budget, desc=desc, unit="tok", disable=not args.progress, file=sys.stderr, leave=False) as bar:
        start = clock.now()
        for rid, prompt in zip(ids, prompts, strict=True):
            engine.add_request(rid, prompt, params, plugin_options=options)
        done = 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    results[out.request_id] = out
                    n = sum(len(o.token_ids) for o in out.outputs)
                    done += n
                    bar.update(n)
        seconds = clock.now() - start
    return done, seconds, [results[i] for i in ids]


def _metrics(engine) -> dict:
    return engine.plugins[0].metrics.as_dict() if engine.plugins else {}


def _delta_accept_len(before: dict, after: dict) -> float:
    drafts = after["drafts"] - before["drafts"]
    return (after["emitted_tokens"] - before["emitted_tokens"]) / drafts if drafts else 1.0


def _side_by_side(plain, spec, batches, params, options, name, args, repeats: int | None = None) -> dict:
    """batches: list of prompt lists, each run as one batch; repeat r runs batches[r::repeats] on both
    engines, in ABBA order (off then on in even repeats, on then off in odd ones), so load drift and
    warm-cache effects hit both sides alike. The headline speed-up is the median of the per-repeat
    ratios; every repeat's figures are kept."""
    repeats = repeats or args.repeats
    totals = {"off": [0, 0.0], "on": [0, 0.0]}
    per_repeat = []
    before = _metrics(spec)
    for r in range(repeats):
        rep = {"off": [0, 0.0], "on": [0, 0.0]}
        sides = (("off", plain, None), ("on", spec, options))
        for prompts in batches[r::repeats]:
            for side, eng, opts in (sides if r % 2 == 0 else sides[::-1]):
                tokens, secs, _ = _run(eng, prompts, params, opts, f"{name}:{side}:{r}", args)
                for acc in (totals[side], rep[side]):
                    acc[0] += tokens
                    acc[1] += secs
        tps = {side: t / s for side, (t, s) in rep.items()}
        per_repeat.append({"order": "off,on" if r % 2 == 0 else "on,off", "tokens_per_s_off": tps["off"],
                           "tokens_per_s_on": tps["on"], "speedup": tps["on"] / tps["off"]})
    after = _metrics(spec)
    tps = {side: t / s for side, (t, s) in totals.items()}
    ratios = [rep["speedup"] for rep in per_repeat]
    return {"speedup": statistics.median(ratios), "speedup_pooled": tps["on"] / tps["off"],
            "speedup_min": min(ratios), "speedup_max": max(ratios),
            "accept_len_mean": _delta_accept_len(before, after),
            "tokens_per_s_off": tps["off"], "tokens_per_s_on": tps["on"],
            "seconds_off": totals["off"][1], "seconds_on": totals["on"][1],
            "acceptance_rate": _rate(before, after), "steps_off": {
                k: after["steps_off"][k] - before["steps_off"][k] for k in after["steps_off"]},
            "repeats": per_repeat}


def _rate(before: dict, after: dict) -> float:
    drafted = after["draft_tokens"] - before["draft_tokens"]
    return (after["accepted_tokens"] - before["accepted_tokens"]) / drafted if drafted else 0.0


def _chat(engine, text: str) -> list[int]:
    return engine.tokenizer.tokenize_chat([{"role": "user", "content": text}])


# ---- workloads ---------------------------------------------------------------------------------
def copy_b1(plain, spec, args) -> dict:
    from engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=args.copy_tokens)
    count = args.copy_prompts * args.repeats
    batches = [[_chat(plain, p)] for p in (COPY_PROMPTS * count)[:count]]
    by = {name: _side_by_side(plain, spec, batches, params, {"spec_decode": {"proposer": name, "k": args.k}},
                              f"copy_b1/{name}", args) for name in ("ngram", "suffix")}
    best = max(by, key=lambda n: by[n]["speedup"])
    return {**by[best], "proposer": best, "by_proposer": by}


def best_of_4(plain, spec, args) -> dict:
    from engine.sampling_params import SamplingParams

    params = SamplingParams(n=4, temperature=0.6, max_tokens=args.best_of_tokens, seed=args.seed)
    count = args.best_of_prompts * args.repeats
    batches = [[_chat(plain, p)] for p in (BEST_OF_PROMPTS * count)[:count]]
    res = _side_by_side(plain, spec, batches, params, {"spec_decode": {"proposer": "suffix", "k": args.k}},
                        "best_of_4", args)
    # what bounds the gain: a verified draft adds per_draft seconds to a step of plain_step seconds, and
    # the 4 samples advance in lock-step, so the family is as fast as its least lucky sample
    cost = spec.plugins[0].step_cost
    plain_step = cost.plain_step(params.n)
    per_draft = cost.estimate(params.n)[1] if cost.estimate(params.n) else None
    return {**res, "proposer": "suffix", "plain_step_ms": None if plain_step is None else 1000 * plain_step,
            "per_draft_ms": None if per_draft is None else 1000 * per_draft}


def chat_c64(plain, spec, args) -> dict:
    from engine.sampling_params import SamplingParams

    texts = [CHAT_PROMPTS[i % len(CHAT_PROMPTS)] + f" (request {i})" for i in range(args.chat_requests)]
    params = SamplingParams(temperature=0.0, max_tokens=args.chat_tokens)
    batch = [_chat(plain, t) for t in texts]
    steps_before = spec.plugins[0].metrics.steps
    with _HookTimer(spec.plugins[0]) as hooks:
        res = _side_by_side(plain, spec, [batch] * args.chat_repeats, params, None, "chat_c64", args,
                            repeats=args.chat_repeats)
    steps = spec.plugins[0].metrics.steps - steps_before
    return {**res, "concurrency": args.chat_requests,
            "plugin_hook_ms_per_step": 1000 * hooks.seconds / max(steps, 1),
            "plugin_hook_fraction_of_on_time": hooks.seconds / res["seconds_on"]}


class _HookTimer:
    """Times the plugin's per-step hooks (propose, verify, after_forward) and the on-side runs, so the
    JSON states what the plugin costs per step even when it speculates nothing."""

    HOOKS = ("propose", "verify", "after_forward")

    def __init__(self, plugin) -> None:
        self.plugin = plugin
        self.seconds = 0.0

    def __enter__(self) -> _HookTimer:
        for name in self.HOOKS:
            setattr(self.plugin, name, self._timed(getattr(self.plugin, name)))
        return self

    def _timed(self, fn):
        def wrapper(*a):
            start = time.perf_counter()
            try:
                return fn(*a)
            finally:
                self.seconds += time.perf_counter() - start
        return wrapper

    def __exit__(self, *exc) -> None:
        for name in self.HOOKS:
            vars(self.plugin).pop(name, None)  # the class's own method again


def _nll(plain, prompt: list[int], output: list[int]) -> float:
    """Teacher-forced mean negative log-likelihood of `output` after `prompt` under the target (an
    engine without prefix caching, so every position's logits are computed)."""
    import torch

    from engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1, extra={"return_logits": True})
    logits = plain.generate([prompt + output], params)[0].logits
    lp = torch.log_softmax(logits.float(), -1)
    rows = lp[len(prompt) - 1:len(prompt) - 1 + len(output)]
    return float(-rows[torch.arange(len(output)), torch.tensor(output)].mean())


def judge(plain, spec, args) -> list[dict]:
    from engine.sampling_params import SamplingParams
    from plugins.spec_decode.plugin import SpecDecodePlugin

    params = SamplingParams(temperature=0.0, max_tokens=args.judge_tokens)
    prompts = [_chat(plain, p) for p in CHAT_PROMPTS[:args.judge_prompts]]
    base = {"proposer": "draft", "k": args.judge_k}
    lossless = [_run(spec, [p], params, {"spec_decode": {**base, "verifier": "lossless"}}, f"judge:lossless:{i}", args)[2][0].outputs[0].token_ids for i, p in enumerate(prompts)]
    scorer = _engine(args.model, (), prefix_caching=False)
    ref_nll = statistics.mean(_nll(scorer, p, o) for p, o in zip(prompts, lossless, strict=True))
    rows = []
    default_tau = SpecDecodePlugin.tau  # the figure the closing note must state is measured, not inferred
    taus = sorted({float(t) for t in args.taus.split(",") if t.strip()} | {default_tau})
    for tau in taus:
        before = _metrics(spec)
        outs, secs, on_tokens, off_secs, off_tokens = [], 0.0, 0, 0.0, 0
        for i, p in enumerate(prompts):
            t, s, _ = _run(plain, [p], params, None, f"judge:off:{i}", args)
            off_secs, off_tokens = off_secs + s, off_tokens + t
            t, s, o = _run(spec, [p], params, {"spec_decode": {**base, "verifier": "judge", "tau": tau}},
                           f"judge:tau={tau}:{i}", args)
            outs.append(o[0].outputs[0].token_ids)
            secs, on_tokens = secs + s, on_tokens + t
        after = _metrics(spec)
        kl_sum = after["judge_relaxed_kl_sum"] - before["judge_relaxed_kl_sum"]
        match = [_match_len(a, b) for a, b in zip(outs, lossless, strict=True)]
        nll = statistics.mean(_nll(scorer, p, o) for p, o in zip(prompts, outs, strict=True))
        rows.append({"tau": tau, "speedup": (on_tokens / secs) / (off_tokens / off_secs),
                     "accept_len_mean": _delta_accept_len(before, after),
                     "kl_mean": kl_sum / max(on_tokens, 1),
                     "relaxed_accepts": after["judge_relaxed"] - before["judge_relaxed"],
                     "match_len_mean": statistics.mean(match),
                     "identical_outputs": sum(a == b for a, b in zip(outs, lossless, strict=True)),
                     "nll_delta": nll - ref_nll, "default": tau == default_tau})
    return rows


def _match_len(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# ---- entry point -------------------------------------------------------------------------------
def run(args) -> int:
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
    known = ("copy_b1", "best_of_4", "chat_c64", "judge")
    if not wanted or any(w not in known for w in wanted):
        raise ValueError(f"--workloads must be a subset of {','.join(known)}, got {args.workloads!r}")
    if args.repeats < 1 or args.chat_repeats < 1:
        raise ValueError("--repeats and --chat-repeats must be >= 1")
    args.clock = StallClock()
    try:
        return _run_all(args, wanted)
    finally:
        args.clock.close()


def _run_all(args, wanted: list[str]) -> int:
    config = {"proposer": "ngram", "extra_proposers": "suffix"}
    plain = _engine(args.model, ())
    spec = _engine(args.model, (("spec_decode", config),))
    result: dict = {"machine": report.machine_info(), "model": plain.model_name, "plugin_config": config,
                    "repeats": args.repeats, "workloads": {}}
    for name in ("copy_b1", "best_of_4", "chat_c64"):
        if name in wanted:
            result["workloads"][name] = globals()[name](plain, spec, args)
            print(f"{name}: {_fmt(result['workloads'][name])}", flush=True)
    if "judge" in wanted:
        # the sweep measures the judge itself: the load governor stays out of it (drafts every step)
        judge_config = {"proposer": "draft", "draft_layer_ratio": args.draft_layer_ratio,
                        "draft_layers": args.draft_layers, "k": args.judge_k, "adaptive_k": False,
                        "min_gain": 0.0}
        result["judge_plugin_config"] = judge_config
        result["judge"] = judge(plain, _engine(args.model, (("spec_decode", judge_config),)), args)
        for row in result["judge"]:
            print("judge: " + _fmt(row), flush=True)
    result["machine"]["load_avg_1m_end"] = report.machine_info()["load_avg_1m"]
    result["stalled_seconds_excluded"] = args.clock.stalled
    out = report.write_json(result, args.json, "spec.json")
    _plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _fmt(row: dict) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                     if not isinstance(v, (dict, list)))


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    wl = result["workloads"]
    names = list(wl)
    xs = range(len(names))
    axes[0].bar([x - 0.2 for x in xs], [wl[n]["tokens_per_s_off"] for n in names], 0.4, label="plugin off")
    axes[0].bar([x + 0.2 for x in xs], [wl[n]["tokens_per_s_on"] for n in names], 0.4, label="spec_decode")
    for x, n in zip(xs, names, strict=True):
        axes[0].annotate(f"{wl[n]['speedup']:.2f}x", (x, max(wl[n]["tokens_per_s_on"], wl[n]["tokens_per_s_off"])),
                         ha="center", va="bottom", fontsize=9)
    axes[0].set_xticks(list(xs), names)
    axes[0].set_ylabel("output tokens / s")
    axes[0].legend()
    axes[0].set_title(f"{result['model']} on {result['machine']['cpu'][:40]}", fontsize=9)
    rows = result.get("judge") or []
    if rows:
        taus = [r["tau"] for r in rows]
        axes[1].plot(taus, [r["accept_len_mean"] for r in rows], "o-", label="accepted length")
        axes[1].plot(taus, [r["speedup"] for r in rows], "s-", label="speed-up vs plugin off")
        axes[1].set_xlabel("tau")
        ax2 = axes[1].twinx()
        ax2.plot(taus, [r["kl_mean"] for r in rows], "^--", color="red", label="KL per token")
        ax2.set_ylabel("KL per emitted token", color="red")
        axes[1].legend(loc="upper left", fontsize=8)
        axes[1].set_title("judge: tau sweep (draft = layer-skipping self-draft)", fontsize=9)
    else:
        axes[1].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
