"""How much of a native run its fp32 matmuls alone take: `tessera bench throughput` records the rows of
every step the engine executed (a `StepRows` log), then times the engine's own linear modules, on the
loaded model, at exactly those row counts. The sum is the run's GEMM time: what the same steps would cost
if attention, elementwise ops, sampling and scheduling were free. Its share of the elapsed time says how
much any work outside the matmuls could still gain.

The LM head counts only for rows that needed their logits. Rows that take the plain argmax (greedy, no
logprobs, penalties or bans) get their token from the model's greedy head, which on x86 CPUs with
AVX-512 VNNI is an int8 screen plus a few exact logits (engine/kernels/cpu_greedy_head.py), not an fp32
GEMM; those rows are counted (`greedy_rows`) but not timed here.

Timed apart from the run, each distinct row count once (fastest of a few passes over every layer), so
the figure is a best case for the kernel, like the matmul ceiling."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from benchmarks.matmul_ceiling import timed_pass


@dataclass
class StepRows:
    """Per executed step: (tokens in the step, rows past the last layer's attention, rows through the
    fp32 LM head). Filled by wrapping the runner's `execute`, which adds one tuple per step to the run;
    `greedy_rows` counts the sampled rows that took the greedy head instead."""

    steps: list[tuple[int, int, int]] = field(default_factory=list)
    greedy_rows: int = 0

    def attach(self, runner) -> None:
        execute = runner.execute

        def recording(batch):
            num_tokens = int(batch.input_ids.shape[0])
            kept = batch.kept_rows()
            greedy = sum(1 for req, _, count in batch.sample_rows if count == 1 and req.argmax_only)
            self.greedy_rows += greedy
            self.steps.append((num_tokens, num_tokens if kept is None else len(kept),
                               len(batch.sample_indices) - greedy))
            return execute(batch)

        runner.execute = recording


def _best_pass(calls, passes: int) -> float:
    """calls: [(module, x)] -> the fastest of `passes` timed passes over all of them (after one to warm
    up), in seconds."""
    timed_pass(calls)
    return min(timed_pass(calls) for _ in range(passes))


def gemm_seconds(model, steps: list[tuple[int, int, int]], passes: int = 3, progress: bool = True) -> dict:
    """model: the engine's loaded LlamaForCausalLM (packed linears). Returns the summed GEMM time of
    `steps` and its parts. Per step: every layer's q/k/v projection at the step's tokens, the other
    projections of all but the last layer at the step's tokens and of the last layer at its kept rows,
    and the LM head at the sampled rows."""
    import torch
    from tqdm import tqdm

    layers = model.layers
    hidden = model.arch.hidden_size
    weight = model.embed_tokens.weight
    qkv = [layer.self_attn.qkv_proj for layer in layers]
    rest = [(m, m.in_features) for layer in layers
            for m in (layer.self_attn.o_proj, layer.mlp.gated, layer.mlp.down_proj)]
    inputs: dict[tuple[int, int], torch.Tensor] = {}

    def x(rows: int, width: int) -> torch.Tensor:
        if (rows, width) not in inputs:
            inputs[(rows, width)] = torch.randn(rows, width, dtype=weight.dtype, device=weight.device)
        return inputs[(rows, width)]

    def q_time(m):
        return _best_pass([(lin, x(m, hidden)) for lin in qkv], passes)

    def rest_time(m):
        return _best_pass([(lin, x(m, width)) for lin, width in rest], passes)

    def head_time(m):
        return _best_pass([(model.logits_proj, x(m, hidden))], passes) if m else 0.0

    needed = {("q", t) for t, _, _ in steps} | {("rest", t) for t, _, _ in steps} | \
        {("rest", k) for _, k, _ in steps} | {("head", s) for _, _, s in steps}
    timers = {"q": q_time, "rest": rest_time, "head": head_time}
    measured = {}
    for kind, m in tqdm(sorted(needed), desc="GEMM time per row count", unit="shape", disable=not progress):
        measured[(kind, m)] = timers[kind](m)
    n = len(layers)
    counts = Counter(steps)
    layers_s = sum(c * (measured[("q", t)] + measured[("rest", t)] * (n - 1) / n + measured[("rest", k)] / n)
                   for (t, k, _), c in counts.items())
    head_s = sum(c * measured[("head", s)] for (_, _, s), c in counts.items())
    return {"gemm_s": layers_s + head_s, "layers_s": layers_s, "lm_head_s": head_s, "steps": len(steps),
            "distinct_shapes": len(measured), "passes_per_shape": passes,
            "note": "engine linear modules timed apart from the run at each step's row counts; fastest pass"}
