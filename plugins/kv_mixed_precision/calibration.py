"""Offline calibration (KVTuner): sensitivity on calibration text, per-layer Pareto pruning, NSGA-II
search under a mean-bits budget, and a final measured check of the best candidates. The result is the
plugin's own option mapping, ready for `--plugin-config kv_mixed_precision=PATH.yaml`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tqdm import tqdm

from engine.fidelity import compare_logprobs, teacher_forced_logprobs
from engine.kv_storage import create_kv_storage
from plugins.kv_mixed_precision.config import MODES, LayerBits, mean_bits, to_yaml_dict
from plugins.kv_mixed_precision.search import Candidate, fronts, greedy, nsga2, predicted, refine
from plugins.kv_mixed_precision.sensitivity import layer_spec, measure


@dataclass(frozen=True)
class CalibrationConfig:
    budget: float = 4.0
    mode: str = "kivi"
    group_size: int = 16
    bits: tuple[int, ...] = (2, 4, 8)
    num_texts: int = 8
    text_tokens: int = 256
    trials: int = 1500
    candidates: int = 4
    reference_pair: tuple[int, int] = (4, 4)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.bits or any(b not in (2, 4, 8, 16) for b in self.bits):
            raise ValueError(f"bits must be drawn from 2, 4, 8, 16, got {self.bits}")
        if not min(self.bits) <= self.budget <= 16:
            raise ValueError(f"budget {self.budget} must lie between {min(self.bits)} and 16 mean bits")
        if self.num_texts < 1 or self.text_tokens < 16 or self.trials < 1 or self.candidates < 1:
            raise ValueError("num_texts, trials and candidates must be >= 1 and text_tokens >= 16")
        LayerBits(*self.reference_pair)


def _measured_kl(engine, assignment: dict[int, LayerBits], cfg: CalibrationConfig, sequences, reference):
    storages = engine.kv_storages
    originals = list(storages)
    storages[:] = [create_kv_storage(layer_spec(engine.kv_specs[i], assignment[i], cfg.mode, cfg.group_size),
                                     engine.kv.num_blocks, engine.kv.block_size, engine.platform.device)
                   for i in range(len(originals))]
    try:
        kl, top1, _ = compare_logprobs(reference, teacher_forced_logprobs(engine, sequences))
    finally:
        storages[:] = originals
    return kl, top1


def calibrate(engine, cfg: CalibrationConfig, progress: bool = True,
              budgets: list[float] | None = None) -> dict[float, dict]:
    """`engine`: an unmodified LLMEngine with the prefix cache off. One sensitivity measurement serves
    every budget (default: cfg.budget). Returns {budget: YAML mapping}."""
    from engine.calibration_text import token_windows

    t0 = time.perf_counter()
    budgets = budgets or [cfg.budget]
    for b in budgets:
        CalibrationConfig(**{**cfg.__dict__, "budget": b})  # validates each budget
    sequences = token_windows(engine.tokenizer, "calibration", cfg.num_texts, cfg.text_tokens)
    pairs = [LayerBits(k, v) for k in cfg.bits for v in cfg.bits]
    ref_pair = LayerBits(*cfg.reference_pair)
    if ref_pair not in pairs:
        pairs.append(ref_pair)
    sens, reference = measure(engine, sequences, pairs, cfg.mode, cfg.group_size, ref_pair, progress)
    measured_s = time.perf_counter() - t0
    return {b: _search(engine, cfg, b, sens, pairs, sequences, reference, measured_s, progress) for b in budgets}


def _search(engine, cfg, budget, sens, pairs, sequences, reference, measured_s, progress) -> dict:
    t0 = time.perf_counter()
    n = engine.arch.num_layers
    seed = greedy(sens, fronts(sens), budget)
    found = nsga2(sens, budget, cfg.trials, cfg.seed, progress, seeds=[seed])
    pool = found[:cfg.candidates]
    for extra in [seed] + [refine(sens, fronts(sens), c.assignment, budget) for c in found[:cfg.candidates]]:
        if all(c.assignment != extra for c in pool):
            pool.append(Candidate(extra, predicted(sens, extra)))
    uniform = [p for p in pairs if p.mean == budget and p.key_bits >= p.value_bits]
    checks = []
    for c in tqdm(pool, desc=f"measure candidates ({budget} bits)", unit="config", disable=not progress):
        kl, top1 = _measured_kl(engine, c.assignment, cfg, sequences, reference)
        checks.append((kl, top1, c))
    uniform_kl = {}
    for p in uniform:
        kl, top1 = _measured_kl(engine, dict.fromkeys(range(n), p), cfg, sequences, reference)
        uniform_kl[p.label] = {"kl_mean": kl, "top1_agreement": top1}
    kl, top1, best = min(checks, key=lambda x: x[0])
    info = {
        "model": engine.model_name, "budget_bits": budget, "mean_bits": best.mean_bits,
        "calibration_kl_mean": kl, "calibration_top1_agreement": top1, "predicted_kl": best.predicted_kl,
        "uniform_at_budget_on_calibration": uniform_kl,
        "calibration_text": f"pydoc_data.topics calibration split, {cfg.num_texts} x {cfg.text_tokens} tokens",
        "search": f"NSGA-II {cfg.trials} trials over per-layer Pareto pairs of {sorted({p.label for p in pairs})}; "
                  f"{len(checks)} candidates measured",
        "candidates": [{"mean_bits": c.mean_bits, "predicted_kl": c.predicted_kl, "measured_kl": k}
                       for k, _, c in checks],
        "layer_reference_kl": {i: sens.reference_kl[i] for i in range(n)},
        "sensitivity_s": round(measured_s, 1), "search_s": round(time.perf_counter() - t0, 1),
    }
    return to_yaml_dict(best.assignment, cfg.mode, cfg.group_size, info)


def mean_bits_of(data: dict) -> float:
    from plugins.kv_mixed_precision.config import parse_layers

    return mean_bits(parse_layers(data["layers"]))
