"""The synthetic workloads the benchmarks share: exact-length random prompts, comma-separated size
flags, KV bytes per token, and a config-only HF directory for synthetic shapes (what vLLM and HF
transformers load when the weights are random)."""

from __future__ import annotations

import json
import random
from pathlib import Path


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{what} must be positive integers, got {text!r}")
    return values


def random_prompts(tokenizer, vocab_size: int, count: int, length: int, seed: int) -> list[list[int]]:
    """`count` prompts of exactly `length` ids drawn uniformly from the vocabulary minus special ids."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.eos_token_ids)
    if tokenizer.bos_token_id is not None:
        special.add(tokenizer.bos_token_id)
    pool = [i for i in range(min(vocab_size, tokenizer.vocab_size)) if i not in special]
    rng = random.Random(seed)
    return [rng.choices(pool, k=length) for _ in range(count)]


def kv_bytes_per_token(arch, dtype: str) -> int:
    elem = 2 if dtype in ("bfloat16", "float16") else 4
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * elem


def write_hf_config_dir(resolved, target: Path) -> Path:
    """A config-only HF directory for a synthetic shape (vLLM load_format=dummy, HF from_config)."""
    a = resolved.arch
    model_type = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}.get(a.architecture, "llama")
    cfg = {"architectures": [a.architecture], "model_type": model_type, "vocab_size": a.vocab_size,
           "hidden_size": a.hidden_size, "intermediate_size": a.intermediate_size,
           "num_hidden_layers": a.num_layers, "num_attention_heads": a.num_heads,
           "num_key_value_heads": a.num_kv_heads, "head_dim": a.head_dim, "hidden_act": "silu",
           "rope_theta": a.rope_theta, "rms_norm_eps": a.rms_norm_eps,
           "max_position_embeddings": a.max_position_embeddings, "tie_word_embeddings": a.tie_word_embeddings,
           "attention_bias": a.attention_bias, "torch_dtype": a.torch_dtype, "bos_token_id": a.bos_token_id,
           "eos_token_id": list(a.eos_token_ids) if len(a.eos_token_ids) > 1 else a.eos_token_ids[0]}
    if a.rope_scaling:
        cfg["rope_scaling"] = a.rope_scaling
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = Path(resolved.tokenizer_dir) / name
        if src.is_file():
            (target / name).write_bytes(src.read_bytes())
    return target
