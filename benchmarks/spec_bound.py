"""`tessera bench spec-bound`: how many decode steps sibling-sharing speculation can save on the
best-of-4 workload at all, and the most speed-up that allows on this machine.

The plain engine samples every best-of-4 family once (n = 4, temperature 0.6, a fixed seed). Lossless
speculation with that seed emits exactly these tokens (the run checks this on one family with the
`suffix` proposer), so a draft token is accepted exactly when it equals the recorded next token, and
the number of steps any drafting policy would take can be replayed offline, without timing noise. The
four samples advance in lock-step: a family takes as many steps as its slowest sample.

Policies replayed, each over the `suffix` proposer's statistics: its family index (the prompt and the
tokens every sibling has emitted so far) and its window of recent requests (the earlier families'
samples, weighted by --recent-weight):
- chain_k: up to k drafts, each the most frequent continuation of the longest matching suffix, stopping
  when the product of continuation frequencies falls below --min-score (the proposer's walk);
- tree_N: a tree of up to N draft tokens per sample, grown best first by the product of continuation
  frequencies (every continuation of the longest matching suffix is a child), verified in one step:
  the sample follows its recorded text down the tree;
- oracle: every token that follows any matching suffix (lengths min_n..max_n) is available, so a
  step accepts as far as the recorded text keeps to continuations already seen. No drafter drawing on
  these statistics accepts more, with any number of drafts or tree-shaped drafts.

`steps_ratio` = plain steps / policy steps is the speed-up the policy would reach if verifying drafts
cost nothing; a real verify step costs at least a plain one, so it is an upper bound on the speed-up.
`verified_per_step` is the mean tokens a step would verify (the cost side; for the oracle only the
accepted path, which no real tree achieves).

The cost side, measured in the same run, turns the steps into a bound on the speed-up on this machine:
T(b), the time of a plain decode step of b requests (the engine's own steps), and G(M), the time of
one pass of M rows through every weight matrix with the engine's linear kernel (the throughput
benchmark's matmul ceiling at batch M, its fastest pass). A step
that verifies M tokens for b requests costs at least T(b) + G(M) - G(b): everything a plain step does
plus the extra GEMM rows, and nothing for drafting or verifying. `speedup_bound` = sum of T(b) over
the plain steps / sum of that over the policy's steps (step by step, from the replay): no
implementation of the policy is faster here. JSON + PNG."""

from __future__ import annotations

import statistics
import sys
from collections import deque

from benchmarks import report
from benchmarks.draft_replay import Family, Replay, replay
from benchmarks.spec_prompts import BEST_OF_PROMPTS
from plugins.spec_decode.suffix_index import SuffixIndex


def register(subparsers) -> None:
    p = subparsers.add_parser("spec-bound", help="best-of-4: decode steps sibling-sharing speculation can save",
                              description=__doc__)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=len(BEST_OF_PROMPTS), help="best-of prompts (families)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--ks", default="1,2,3,4,8", help="chain lengths to replay (comma-separated)")
    p.add_argument("--tree-nodes", default="4,8,16", help="tree sizes to replay (comma-separated)")
    p.add_argument("--min-n", type=int, default=1)
    p.add_argument("--max-n", type=int, default=8)
    p.add_argument("--min-score", type=float, default=0.1)
    p.add_argument("--recent-weight", type=float, default=0.5, help="the proposer's global_weight")
    p.add_argument("--max-recent", type=int, default=64, help="the proposer's window of recent requests")
    p.add_argument("--cost-sweeps", type=int, default=3, help="alternating sweeps over both cost curves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="output JSON (PNG next to it); default benchmarks/results/")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


# ---- the cost side -----------------------------------------------------------------------------
def step_cost_curve(engine, prompt: list[int], sizes, progress: bool, steps: int = 12, passes: int = 2,
                    context: int = 0) -> dict[int, float]:
    """Seconds of a plain decode step of m single-token requests, for each m in `sizes`, once each has
    decoded `context` tokens past the prompt (attention grows with the context): the median over
    `steps` timed steps, the fastest of `passes` passes that each go through every size in turn (so
    drift on a shared machine hits all sizes alike)."""
    import time

    from tqdm import tqdm

    from engine.sampling_params import SamplingParams

    sizes = list(sizes)
    total = context + steps + 8
    params = SamplingParams(temperature=0.0, max_tokens=total, min_tokens=total, ignore_eos=True)
    best: dict[int, float] = {}
    with tqdm(total=passes * len(sizes), desc="step cost", unit="size", disable=not progress, file=sys.stderr) as bar:
        for p in range(passes):
            for m in sizes:
                ids = [f"cost-{p}-{m}-{i}" for i in range(m)]
                for rid in ids:
                    engine.add_request(rid, prompt, params)
                while engine.stats().num_waiting or _prefilling(engine):
                    engine.step()
                for _ in range(1 + context):
                    engine.step()
                times = []
                for _ in range(steps):
                    start = time.perf_counter()
                    engine.step()
                    times.append(time.perf_counter() - start)
                for rid in ids:
                    engine.abort_request(rid)
                best[m] = min(best.get(m, float("inf")), statistics.median(times))
                bar.update(1)
    return best


def _prefilling(engine) -> bool:
    return any(req.num_computed_tokens < req.num_prompt_tokens for req in engine.scheduler.running)


# ---- the run -----------------------------------------------------------------------------------
def _engine(model: str, plugins: tuple):
    from benchmarks.spec import _engine as build

    return build(model, plugins)


def _sample(engine, prompts: list[list[int]], params, options, progress: bool, desc: str) -> list[Family]:
    from tqdm import tqdm

    families = []
    for n, prompt in enumerate(tqdm(prompts, desc=desc, unit="family", disable=not progress, file=sys.stderr)):
        rid = f"{desc}-{n}"
        engine.add_request(rid, prompt, params, plugin_options=options)
        out = None
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished and o.request_id == rid:
                    out = o
        families.append(Family(prompt, [list(c.token_ids) for c in out.outputs]))
    return families


def _sizes(flag: str, text: str) -> list[int]:
    try:
        sizes = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if sizes and sizes[0] < 1:
        raise ValueError(f"{flag} sizes must be >= 1, got {text!r}")
    return sizes


def run(args) -> int:
    ks, trees = _sizes("--ks", args.ks), _sizes("--tree-nodes", args.tree_nodes)
    if not ks:
        raise ValueError("--ks must name at least one chain length")
    if not 1 <= args.prompts <= len(BEST_OF_PROMPTS):
        raise ValueError(f"--prompts must be in [1, {len(BEST_OF_PROMPTS)}], got {args.prompts}")
    if args.cost_sweeps < 1:
        raise ValueError(f"--cost-sweeps must be >= 1, got {args.cost_sweeps}")
    if args.n < 2:
        raise ValueError(f"--n must be >= 2 (siblings to share), got {args.n}")
    import torch
    from tqdm import tqdm

    from benchmarks.matmul_ceiling import engine_linears, linear_weights, matmul_ceiling
    from engine.loader.model_registry import resolve_model
    from engine.sampling_params import SamplingParams

    params = SamplingParams(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    plain = _engine(args.model, ())
    prompts = [plain.tokenizer.tokenize_chat([{"role": "user", "content": t}]) for t in BEST_OF_PROMPTS[:args.prompts]]
    families = _sample(plain, prompts, params, None, args.progress, "sample")
    # the replay's premise: lossless speculation emits the plain run's tokens
    spec = _engine(args.model, (("spec_decode", {"proposer": "suffix", "k": max(ks), "adaptive_k": False,
                                                 "min_gain": 0.0}),))
    checked = _sample(spec, prompts[:1], params, {"spec_decode": {"proposer": "suffix"}}, False, "check")[0]
    plugin_metrics = spec.plugins[0].metrics
    premise = {"family": 0, "samples_identical": checked.samples == families[0].samples,
               "accepted_tokens": plugin_metrics.accepted_tokens}

    spec.close()
    del spec  # the cost curves are timed with the plain engine alone in memory
    policies = {"plain": ("plain", 0)} | {f"chain_k{k}": ("chain", k) for k in ks} \
        | {f"tree_{n}": ("tree", n) for n in trees} | {"oracle": ("oracle", 0)}
    per_family: dict[str, list[Replay]] = {name: [] for name in policies}
    # families run one after another, as in `tessera bench spec`: each is drafted with the earlier
    # ones' finished samples in the proposer's recent window
    recent = SuffixIndex(args.min_n, args.max_n)
    window: deque[list[int]] = deque()
    for fam in families:
        for name, (policy, k) in policies.items():
            per_family[name].append(replay(fam, policy, k, args.min_n, args.max_n, args.min_score,
                                          recent, args.recent_weight))
        for sample in fam.samples:
            window.append(fam.prompt + sample)
            recent.add(window[-1], 0)
        while len(window) > args.max_recent:
            recent.remove(window.popleft())
    plain_steps = sum(r.steps for r in per_family["plain"])
    rows = {}
    for name, reps in per_family.items():
        steps = sum(r.steps for r in reps)
        rows[name] = {"steps": steps, "steps_ratio": plain_steps / steps,
                      "verified_per_step": sum(r.verified for r in reps) / steps,
                      "steps_ratio_per_family": [p.steps / r.steps for p, r in zip(per_family["plain"], reps, strict=True)]}
    # the two curves are measured in alternating sweeps and each point keeps its fastest sweep: this
    # VM's speed drifts by a third within minutes, and the bound divides one curve by the other
    top = max(m for reps in per_family.values() for r in reps for _, m in r.shapes)
    step: dict[int, float] = {}
    gemm: dict[int, float] = {}
    weights = linear_weights(resolve_model(args.model, progress=False), "float32", torch.device("cpu"))
    linears = engine_linears(weights)
    for _ in range(args.cost_sweeps):
        # plain steps timed halfway through a sample, the workload's mean context
        for b, t in step_cost_curve(plain, prompts[0], range(1, args.n + 1), args.progress, passes=1,
                                    context=args.max_tokens // 2).items():
            step[b] = min(step.get(b, t), t)
        for m in tqdm(range(1, top + 1), desc="GEMM cost", unit="size", disable=not args.progress, file=sys.stderr):
            t = matmul_ceiling(weights, m, min_time_s=0.0, linears=linears)["time_per_step_s"]
            gemm[m] = min(gemm.get(m, t), t)
    del weights, linears

    def seconds(reps: list[Replay]) -> float:
        return sum(step[b] + gemm[m] - gemm[b] for r in reps for b, m in r.shapes)

    plain_seconds = seconds(per_family["plain"])
    for name, row in rows.items():
        row["speedup_bound"] = plain_seconds / seconds(per_family[name])
    result = {"machine": report.machine_info(), "model": plain.model_name,
              "workload": {"prompts": args.prompts, "n": args.n, "temperature": args.temperature,
                           "max_tokens": args.max_tokens, "seed": args.seed,
                           "output_tokens": sum(len(s) for f in families for s in f.samples)},
              "suffix": {"min_n": args.min_n, "max_n": args.max_n, "min_score": args.min_score,
                         "recent_weight": args.recent_weight, "max_recent": args.max_recent},
              "premise": premise, "policies": rows,
              "cost_sweeps": args.cost_sweeps,
              "decode_step_ms": {str(b): 1000 * t for b, t in step.items()},
              "gemm_pass_ms": {str(m): 1000 * t for m, t in gemm.items()}}
    for name, row in rows.items():
        spread = row["steps_ratio_per_family"]
        print(f"{name:10s} steps {row['steps']:6d}  steps_ratio {row['steps_ratio']:.3f} "
              f"(families {min(spread):.2f}-{max(spread):.2f}, median {statistics.median(spread):.2f})  "
              f"verified/step {row['verified_per_step']:.2f}  speedup_bound {row['speedup_bound']:.3f}", flush=True)
    print(f"premise: speculative samples identical to plain: {premise['samples_identical']}", flush=True)
    out = report.write_json(result, args.json, "spec-bound.json")
    report.bar_plot({name.replace("_", " "): {"steps ratio (free verification)": row["steps_ratio"],
                                              "speed-up bound (measured step cost)": row["speedup_bound"]}
                     for name, row in rows.items()},
                    f"best-of-{args.n}, T={args.temperature}, {args.prompts} prompts: what drafting from sibling "
                    f"samples can gain\n{result['model']} on {result['machine']['cpu'][:48]}",
                    "plain steps (time) / policy's", out.with_suffix(".png"), fmt="%.2f")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0 if premise["samples_identical"] else 1
