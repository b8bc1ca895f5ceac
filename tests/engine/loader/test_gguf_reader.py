from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.loader.default_model import embedded_gguf_path
from engine.loader.gguf_reader import (
    GGUFFile,
    build_tokenizer,
    hf_tensor_name,
    read_config,
    unpermute_rotary,
    write_hf_dir,
)

from .conftest import TINY, TINY_TEMPLATE, llama_cpp_permute, write_tiny_gguf


@pytest.mark.parametrize("n_head,head_dim", [(9, 64), (3, 64), (4, 8), (1, 4)])
def test_unpermute_inverts_llama_cpp_permute(n_head, head_dim):
    w = np.random.default_rng(0).standard_normal((n_head * head_dim, 7)).astype(np.float32)
    assert not np.array_equal(llama_cpp_permute(w, n_head), w)
    np.testing.assert_array_equal(unpermute_rotary(llama_cpp_permute(w, n_head), n_head), w)


def _rope_interleaved(x, pos, theta=10000.0):
    """llama.cpp LLAMA_ROPE_TYPE_NORM: rotates adjacent pairs (2i, 2i+1). x: [n_head, head_dim]."""
    d = x.shape[-1]
    freqs = pos * theta ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(freqs), np.sin(freqs)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def _rope_half(x, pos, theta=10000.0):
    """HF Llama rotate_half: rotates element i against i + d/2. x: [n_head, head_dim]."""
    d = x.shape[-1]
    freqs = pos * theta ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(np.concatenate([freqs, freqs])), np.sin(np.concatenate([freqs, freqs]))
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * cos + rot * sin


def test_unpermuted_weights_give_same_attention_scores_under_hf_rope():
    # The property that matters: llama.cpp rope on GGUF weights == HF rope on un-permuted weights.
    rng = np.random.default_rng(1)
    n_head, head_dim, hidden = 4, 16, 24
    wq_gguf = rng.standard_normal((n_head * head_dim, hidden))
    wk_gguf = rng.standard_normal((n_head * head_dim, hidden))
    x1, x2 = rng.standard_normal(hidden), rng.standard_normal(hidden)
    q_cpp = _rope_interleaved((wq_gguf @ x1).reshape(n_head, head_dim), pos=5)
    k_cpp = _rope_interleaved((wk_gguf @ x2).reshape(n_head, head_dim), pos=2)
    wq_hf, wk_hf = unpermute_rotary(wq_gguf, n_head), unpermute_rotary(wk_gguf, n_head)
    q_hf = _rope_half((wq_hf @ x1).reshape(n_head, head_dim), pos=5)
    k_hf = _rope_half((wk_hf @ x2).reshape(n_head, head_dim), pos=2)
    np.testing.assert_allclose((q_cpp * k_cpp).sum(-1), (q_hf * k_hf).sum(-1), rtol=1e-10)


def test_tensor_name_mapping():
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_tensor_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert hf_tensor_name("rope_freqs.weight") is None


def test_tiny_gguf_round_trips_to_hf_weights(tiny_gguf, tmp_path):
    path, expected = tiny_gguf
    out = write_hf_dir(path, tmp_path / "hf")
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(expected)
    for name, arr in expected.items():
        assert got[name].dtype == torch.float32
        np.testing.assert_array_equal(got[name].numpy(), arr, err_msg=name)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == TINY["hidden"] and cfg["num_hidden_layers"] == TINY["layers"]
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 8)
    assert cfg["tie_word_embeddings"] is False and cfg["rms_norm_eps"] == pytest.approx(1e-6)
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == TINY_TEMPLATE
    assert (tok_cfg["bos_token"], tok_cfg["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_tied_tiny_gguf_has_no_lm_head(tmp_path):
    path = tmp_path / "tied.gguf"
    write_tiny_gguf(path, tied=True)
    gf = GGUFFile(path)
    assert read_config(gf)["tie_word_embeddings"] is True
    out = write_hf_dir(path, tmp_path / "hf")
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))


def test_tiny_tokenizer_applies_merges_and_keeps_specials_whole(tiny_gguf):
    tok = build_tokenizer(GGUFFile(tiny_gguf[0]))
    ids = tok.encode("<|im_start|> the").ids
    assert [tok.id_to_token(i) for i in ids] == ["<|im_start|>", "Ġthe"]
    assert tok.decode(ids, skip_special_tokens=True) == " the"


def test_default_gguf_config_matches_smollm2_135m():
    cfg = read_config(GGUFFile(embedded_gguf_path()))
    assert cfg["vocab_size"] == 49152 and cfg["hidden_size"] == 576
    assert cfg["intermediate_size"] == 1536 and cfg["num_hidden_layers"] == 30
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (9, 3, 64)
    assert cfg["rope_theta"] == 100000.0 and cfg["max_position_embeddings"] == 8192
    assert cfg["tie_word_embeddings"] is True
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)


def test_unsupported_architecture_is_refused(tmp_path):
    import gguf

    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(path), arch="mamba")
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="mamba"):
        GGUFFile(path)


def test_weights_loader_reads_converted_dir_and_honours_index(tiny_gguf, tmp_path):
    from safetensors.torch import save_file

    from engine.loader.weights import iter_safetensors, load_state_dict

    path, expected = tiny_gguf
    out = write_hf_dir(path, tmp_path / "hf")
    sd = load_state_dict(out, dtype=torch.bfloat16)
    assert set(sd) == set(expected) and all(t.dtype == torch.bfloat16 for t in sd.values())
    torch.testing.assert_close(sd["model.norm.weight"].float(),
                               torch.from_numpy(expected["model.norm.weight"]), rtol=1e-2, atol=1e-2)

    # Two shards named by an index, plus a stray file the index does not mention.
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(expected)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in parts.items():
        save_file({k: torch.from_numpy(expected[k]) for k in keys}, str(sharded / fname))
    save_file({"stray": torch.zeros(1)}, str(sharded / "consolidated.safetensors"))
    weight_map = {k: f for f, keys in parts.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    got = dict(iter_safetensors(sharded))
    assert set(got) == set(expected)
    np.testing.assert_array_equal(got[names[-1]].numpy(), expected[names[-1]])
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="00002"):
        list(iter_safetensors(sharded))
