"""`tessera calibrate kv`: searches a per-layer (key bits, value bits) assignment for the
kv_mixed_precision plugin under a mean-bits budget and writes it as YAML."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="offline calibration of plugins")
    sub = p.add_subparsers(dest="calibrate_kind", required=True)
    k = sub.add_parser("kv", help="KVTuner search for kv_mixed_precision",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__)
    k.add_argument("--model", default=None, help="registered name, HF directory, .gguf (default: SmolLM2-135M)")
    k.add_argument("--budget", required=True,
                   help="largest mean bits over layers and K/V; a comma-separated list shares one sensitivity run")
    k.add_argument("--out", required=True, help="output YAML (the plugin's options); with several budgets it "
                                                "must contain {budget}")
    k.add_argument("--mode", default="kivi", choices=["kivi", "per_token"])
    k.add_argument("--group-size", type=int, default=16)
    k.add_argument("--bits", default="2,4,8", help="candidate bit widths for keys and values (16 = unquantized)")
    k.add_argument("--num-texts", type=int, default=8, help="calibration sequences (one topic each)")
    k.add_argument("--text-tokens", type=int, default=256)
    k.add_argument("--trials", type=int, default=1500, help="NSGA-II trials on the predicted KL")
    k.add_argument("--candidates", type=int, default=4, help="best predicted solutions measured for real")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--device", default="cpu")
    k.add_argument("--no-progress", dest="progress", action="store_false")
    k.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import yaml

    from engine.config import CacheConfig, DeviceConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from plugins.kv_mixed_precision.calibration import CalibrationConfig, calibrate

    try:
        bits = tuple(int(b) for b in args.bits.split(",") if b.strip())
        budgets = [float(b) for b in str(args.budget).split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--bits and --budget must be comma-separated numbers, got {args.bits!r}, "
                         f"{args.budget!r}") from None
    if not budgets:
        raise ValueError("--budget is empty")
    if len(budgets) > 1 and "{budget}" not in args.out:
        raise ValueError("with several budgets --out must contain {budget}")
    cfg = CalibrationConfig(budget=budgets[0], mode=args.mode, group_size=args.group_size, bits=bits,
                            num_texts=args.num_texts, text_tokens=args.text_tokens, trials=args.trials,
                            candidates=args.candidates, seed=args.seed)
    # three times what the texts fill, so the KIVI staging pool (one slot per 16 blocks) holds every
    # text's sink and residual block
    blocks = 3 * args.num_texts * (-(-args.text_tokens // 16) + 1) + 4
    engine = LLMEngine(EngineConfig(
        model=ModelConfig(dtype="float32", **({"model": args.model} if args.model else {})),
        cache=CacheConfig(enable_prefix_caching=False, num_blocks=blocks),
        scheduler=SchedulerConfig(max_num_seqs=args.num_texts,
                                  max_num_batched_tokens=max(512, args.text_tokens)),
        device=DeviceConfig(device=args.device)), progress=args.progress)
    for budget, data in calibrate(engine, cfg, progress=args.progress, budgets=budgets).items():
        out = Path(args.out.replace("{budget}", f"{budget:g}"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        c = data["calibration"]
        print(f"wrote {out}: mean bits {c['mean_bits']:.3f}, calibration KL {c['calibration_kl_mean']:.5f} "
              f"(uniform at budget: {c['uniform_at_budget_on_calibration']})", file=sys.stderr)
    return 0
