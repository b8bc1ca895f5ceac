from __future__ import annotations

import pytest

from engine.models.arch import ModelArch
from engine.models.synthetic import SYNTHETIC_SHAPES, synthetic_arch


def test_required_shapes_exist():
    assert {"tiny", "smollm2-135m", "llama3-8b", "qwen2-0.5b", "qwen3-0.6b"} <= set(SYNTHETIC_SHAPES)
    assert all(isinstance(a, ModelArch) for a in SYNTHETIC_SHAPES.values())


def test_tiny_fits_the_default_tokenizer():
    a = synthetic_arch("tiny")
    assert a.architecture == "LlamaForCausalLM" and a.vocab_size == 49152
    assert (a.hidden_size, a.intermediate_size, a.num_layers) == (64, 128, 2)
    assert (a.num_heads, a.num_kv_heads, a.head_dim) == (4, 2, 16) and a.tie_word_embeddings


def test_llama3_8b_shape():
    a = synthetic_arch("llama3-8b")
    assert (a.vocab_size, a.hidden_size, a.intermediate_size, a.num_layers) == (128256, 4096, 14336, 32)
    assert (a.num_heads, a.num_kv_heads, a.head_dim) == (32, 8, 128)
    assert a.rope_theta == 500000.0 and a.max_position_embeddings == 8192
    assert not a.tie_word_embeddings and a.eos_token_ids == (128001, 128009)
    # Published parameter count of Llama-3-8B is 8.03B.
    assert round(a.num_params / 1e9, 2) == 8.03


@pytest.mark.parametrize("shape,billions", [("qwen2-0.5b", 0.49), ("qwen3-0.6b", 0.6), ("smollm2-135m", 0.13)])
def test_real_shapes_have_published_sizes(shape, billions):
    # num_params ignores Qwen's q/k/v biases and q/k norms (< 0.1% of weights).
    assert round(synthetic_arch(shape).num_params / 1e9, 2) == billions


def test_family_flags():
    assert synthetic_arch("qwen2-0.5b").attention_bias and not synthetic_arch("qwen2-0.5b").qk_norm
    assert synthetic_arch("qwen3-0.6b").qk_norm and synthetic_arch("qwen3-0.6b").head_dim == 128
    assert synthetic_arch("qwen3-0.6b").architecture == "Qwen3ForCausalLM"


def test_unknown_shape_lists_known_ones():
    with pytest.raises(ValueError, match="llama3-8b.*tiny"):
        synthetic_arch("gpt-5")
