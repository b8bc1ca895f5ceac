"""Hugging Face transformers baseline for `tessera bench throughput`, run as a subprocess:

    python benchmarks/baselines/hf_offline.py --model-dir DIR --prompts P.json --batch-size 16 \
        --output-len 128 --dtype float32

Static batching, as a plain transformers user would do it: the prompts go through
`AutoModelForCausalLM.generate(do_sample=False, max_new_tokens=L, min_new_tokens=L)` in batches of
--batch-size, left-padded. `--random-weights` builds the model from config.json alone (synthetic
models, speed only). Only generate() on the timed prompts is timed; loading and a short warmup are
not. Prints one line `TESSERA_RESULT {json}` on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from cpu_steal import cpu_ticks, steal_share  # this script's directory is on sys.path

RESULT_PREFIX = "TESSERA_RESULT "
DTYPES = {"auto": "float32", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True, help="HF model directory")
    p.add_argument("--prompts", required=True, help="JSON file with prompts / warmup_prompts token ids")
    p.add_argument("--batch-size", type=int, required=True, help="concurrency: sequences per generate()")
    p.add_argument("--output-len", type=int, required=True, help="exact number of new tokens per request")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--random-weights", action="store_true", help="build from config.json, random weights")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the generated token ids here (JSON)")
    p.add_argument("--progress", action="store_true", help="token-level tqdm bar on stderr")
    return p.parse_args(argv)


def load_model(args, torch):
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, DTYPES[args.dtype])
    if args.random_weights:
        torch.manual_seed(args.seed)
        config = AutoConfig.from_pretrained(args.model_dir)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype)
    return model.eval()


def batches(prompts: list[list[int]], size: int):
    for i in range(0, len(prompts), size):
        yield prompts[i:i + size]


def left_pad(batch: list[list[int]], pad_id: int, torch, device):
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, p in enumerate(batch):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def progress_criteria(total: int, desc: str):
    """A StoppingCriteria that never stops and ticks a token-level tqdm bar on stderr each step."""
    import torch
    from tqdm import tqdm
    from transformers import StoppingCriteria, StoppingCriteriaList

    bar = tqdm(total=total, desc=desc, unit="tok", file=sys.stderr)

    class _Tick(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            bar.update(input_ids.shape[0])
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Tick()]), bar


def run_batches(model, prompts, args, torch, device, pad_id, new_tokens, progress=False):
    outputs: list[list[int]] = []
    criteria, bar = (progress_criteria(len(prompts) * new_tokens, f"hf c={args.batch_size}")
                     if progress else (None, None))
    for batch in batches(prompts, args.batch_size):
        ids, mask = left_pad(batch, pad_id, torch, device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=pad_id, num_beams=1, stopping_criteria=criteria)
        outputs.extend(out[:, ids.shape[1]:].tolist())
    if device.type == "cuda":
        torch.cuda.synchronize()
    if bar is not None:
        bar.close()
    return outputs


def main(argv=None) -> int:
    args = parse_args(argv)
    with open(args.prompts, encoding="utf-8") as f:
        data = json.load(f)
    prompts: list[list[int]] = data["prompts"]
    warmup: list[list[int]] = data.get("warmup_prompts") or []

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    t0 = time.perf_counter()
    model = load_model(args, torch).to(device)
    load_s = time.perf_counter() - t0
    cfg = model.config
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (
        cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else (cfg.eos_token_id or 0))

    t0 = time.perf_counter()
    if warmup:
        run_batches(model, warmup, args, torch, device, pad_id, min(4, args.output_len))
    warmup_s = time.perf_counter() - t0

    ticks, t0 = cpu_ticks(), time.perf_counter()
    token_ids = run_batches(model, prompts, args, torch, device, pad_id, args.output_len, args.progress)
    elapsed = time.perf_counter() - t0
    stolen = steal_share(ticks, cpu_ticks())

    out_tokens = sum(len(t) for t in token_ids)
    in_tokens = sum(len(p) for p in prompts)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"token_ids": token_ids}, f)
    import transformers

    result = {
        "backend": "hf", "transformers_version": transformers.__version__,
        "elapsed_s": elapsed, "output_tokens": out_tokens, "input_tokens": in_tokens,
        "output_tok_s": out_tokens / elapsed, "total_tok_s": (out_tokens + in_tokens) / elapsed,
        "cpu_steal_share": stolen,
        "load_s": load_s, "warmup_s": warmup_s, "num_requests": len(prompts),
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "settings": {"batch_size": args.batch_size, "dtype": DTYPES[args.dtype], "padding": "left",
                     "random_weights": args.random_weights},
    }
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
