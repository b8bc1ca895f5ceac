"""Search for the per-layer (key bits, value bits) assignment: NSGA-II (Optuna) over each layer's Pareto
pairs, minimizing the predicted KL and the mean bits under a mean-bits budget; the best few feasible
solutions are then measured for real and the lowest measured KL wins."""

from __future__ import annotations

from dataclasses import dataclass

from plugins.kv_mixed_precision.config import LayerBits, mean_bits
from plugins.kv_mixed_precision.sensitivity import Sensitivity, pareto_front


@dataclass(frozen=True)
class Candidate:
    assignment: dict[int, LayerBits]
    predicted_kl: float

    @property
    def mean_bits(self) -> float:
        return mean_bits(self.assignment)


def fronts(sens: Sensitivity) -> list[list[LayerBits]]:
    return [pareto_front({p: sens.predicted_kl(layer, p) for p in sens.pairs}) for layer in range(len(sens.errors))]


def predicted(sens: Sensitivity, assignment: dict[int, LayerBits]) -> float:
    return sum(sens.predicted_kl(layer, b) for layer, b in assignment.items())


def greedy(sens: Sensitivity, front: list[list[LayerBits]], budget: float) -> dict[int, LayerBits]:
    """Start every layer at its cheapest pair, then repeatedly take the upgrade with the best predicted
    KL saved per added bit that still fits the budget (a seed for the evolutionary search)."""
    pick = [0] * len(front)
    total_bits = sum(f[0].mean for f in front)
    limit = budget * len(front)
    while True:
        best, best_gain = None, 0.0
        for layer, f in enumerate(front):
            for j in range(pick[layer] + 1, len(f)):
                extra = f[j].mean - f[pick[layer]].mean
                if total_bits + extra > limit + 1e-9:
                    continue
                gain = (sens.predicted_kl(layer, f[pick[layer]]) - sens.predicted_kl(layer, f[j])) / extra
                if gain > best_gain:
                    best, best_gain = (layer, j, extra), gain
        if best is None:
            return {layer: f[pick[layer]] for layer, f in enumerate(front)}
        layer, j, extra = best
        pick[layer] = j
        total_bits += extra


def nsga2(sens: Sensitivity, budget: float, trials: int, seed: int, progress: bool = True,
          seeds: list[dict[int, LayerBits]] | None = None) -> list[Candidate]:
    """Feasible Pareto solutions (mean bits <= budget) of the two-objective search, lowest predicted KL
    first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    front = fronts(sens)
    n = len(front)

    def assignment_of(params: dict) -> dict[int, LayerBits]:
        return {layer: front[layer][params[f"l{layer}"]] for layer in range(n)}

    def objective(trial):
        params = {f"l{layer}": trial.suggest_int(f"l{layer}", 0, len(front[layer]) - 1) for layer in range(n)}
        a = assignment_of(params)
        bits = mean_bits(a)
        trial.set_constraint("mean_bits_over_budget", bits - budget)
        return predicted(sens, a), bits

    sampler = optuna.samplers.NSGAIISampler(population_size=min(100, max(20, trials // 20)), seed=seed)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for a in seeds or []:
        idx = {f"l{layer}": front[layer].index(a[layer]) for layer in range(n) if a[layer] in front[layer]}
        if len(idx) == n:
            study.enqueue_trial(idx)
    study.optimize(objective, n_trials=trials, show_progress_bar=progress)
    # every feasible trial, not only the Pareto front: the front holds one solution per bit level, and
    # the best few at the budget itself are what the measured check should choose among
    seen, out = set(), []
    for t in study.trials:
        if t.values is None or t.values[1] > budget + 1e-9:
            continue
        a = assignment_of(t.params)
        key = tuple(sorted((k, v.key_bits, v.value_bits) for k, v in a.items()))
        if key not in seen:
            seen.add(key)
            out.append(Candidate(a, t.values[0]))
    out.sort(key=lambda c: c.predicted_kl)
    return out


def refine(sens: Sensitivity, front: list[list[LayerBits]], start: dict[int, LayerBits],
           budget: float) -> dict[int, LayerBits]:
    """Local search on the predicted KL from `start`: take the best single-layer change or pair of changes
    (one layer up the front, another down) that keeps the mean bits within the budget, until none helps."""
    pick = {layer: front[layer].index(start[layer]) for layer in start}
    limit = budget * len(front) + 1e-9

    def cost(layer: int, j: int) -> float:
        return sens.predicted_kl(layer, front[layer][j])

    total = sum(front[layer][pick[layer]].mean for layer in pick)
    while True:
        best, best_gain = None, 1e-15
        moves = [(layer, j) for layer in pick for j in range(len(front[layer])) if j != pick[layer]]
        for a, ja in moves:
            da = front[a][ja].mean - front[a][pick[a]].mean
            ga = cost(a, pick[a]) - cost(a, ja)
            if total + da <= limit and ga > best_gain:
                best, best_gain = ((a, ja),), ga
            if ga <= 0:
                continue
            for b, jb in moves:
                if b == a:
                    continue
                db = front[b][jb].mean - front[b][pick[b]].mean
                gain = ga + cost(b, pick[b]) - cost(b, jb)
                if total + da + db <= limit and gain > best_gain:
                    best, best_gain = ((a, ja), (b, jb)), gain
        if best is None:
            return {layer: front[layer][j] for layer, j in pick.items()}
        for layer, j in best:
            total += front[layer][j].mean - front[layer][pick[layer]].mean
            pick[layer] = j
