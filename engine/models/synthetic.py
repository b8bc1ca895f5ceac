"""Shapes of `synthetic:<shape>` models: real architectures with random weights, for speed work on
machines where no weights can be downloaded. Only the shapes live here; the model code creates the
weights. Numbers are copied from each model's published config.json."""

from __future__ import annotations

from engine.models.arch import ModelArch

SYNTHETIC_SHAPES: dict[str, ModelArch] = {
    # Smallest shape the engine can run; vocab of the default tokenizer so text round-trips.
    "tiny": ModelArch(
        architecture="LlamaForCausalLM", vocab_size=49152, hidden_size=64, intermediate_size=128,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
        rms_norm_eps=1e-5, max_position_embeddings=2048, tie_word_embeddings=True,
        torch_dtype="float32", bos_token_id=1, eos_token_ids=(2,)),
    "smollm2-135m": ModelArch(
        architecture="LlamaForCausalLM", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0,
        rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True,
        torch_dtype="bfloat16", bos_token_id=1, eos_token_ids=(2,)),
    "llama3-8b": ModelArch(
        architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
        rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=False,
        torch_dtype="bfloat16", bos_token_id=128000, eos_token_ids=(128001, 128009)),
    "qwen2-0.5b": ModelArch(
        architecture="Qwen2ForCausalLM", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1000000.0,
        rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=True,
        attention_bias=True, torch_dtype="bfloat16", bos_token_id=151643,
        eos_token_ids=(151645, 151643)),
    "qwen3-0.6b": ModelArch(
        architecture="Qwen3ForCausalLM", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, rope_theta=1000000.0,
        rms_norm_eps=1e-6, max_position_embeddings=40960, tie_word_embeddings=True,
        qk_norm=True, torch_dtype="bfloat16", bos_token_id=151643, eos_token_ids=(151645, 151643)),
}


def synthetic_arch(shape: str) -> ModelArch:
    """The ModelArch of a synthetic shape name (the part after `synthetic:`)."""
    try:
        return SYNTHETIC_SHAPES[shape]
    except KeyError:
        raise ValueError(f"unknown synthetic shape {shape!r}; known shapes: "
                         f"{', '.join(sorted(SYNTHETIC_SHAPES))}") from None
