"""Shared fixtures: the default model converted once per session into a pytest tmp TESSERA_HOME,
and a tiny hand-written GGUF whose true (HF-layout) weights are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.loader.default_model import ensure_model_dir


@pytest.fixture(scope="session")
def tessera_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tessera_home")


@pytest.fixture(scope="session")
def default_dir(tessera_home) -> Path:
    return ensure_model_dir(home=tessera_home, progress=False)


@pytest.fixture(autouse=True)
def _tessera_home_env(tessera_home, monkeypatch):
    # Function-scoped so the variable never leaks into other packages' tests.
    monkeypatch.setenv("TESSERA_HOME", str(tessera_home))


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Verbatim logic of llama.cpp convert_hf_to_gguf.LlamaModel.permute (what the reader undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _byte_alphabet() -> list[str]:
    # GPT-2's bytes_to_unicode table: the 256 single-byte tokens of any byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


TINY = dict(hidden=32, inter=48, layers=2, heads=4, kv_heads=2, head_dim=8, ctx=512)
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_MERGES = ["Ġ t", "h e", "Ġt he"]
TINY_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def write_tiny_gguf(path: Path, seed: int = 0, tied: bool = False) -> dict[str, np.ndarray]:
    """Write a llama GGUF the way llama.cpp's converter would (permuted q/k, reversed dims) and
    return the HF-layout weights it encodes."""
    import gguf

    rng = np.random.default_rng(seed)
    c = TINY
    tokens = TINY_SPECIALS + _byte_alphabet() + ["Ġt", "he", "Ġthe"]
    vocab = len(tokens)
    hf: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": rng.standard_normal((vocab, c["hidden"]), dtype=np.float32),
        "model.norm.weight": rng.standard_normal(c["hidden"], dtype=np.float32),
    }
    if not tied:
        hf["lm_head.weight"] = rng.standard_normal((vocab, c["hidden"]), dtype=np.float32)
    q_out, kv_out = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    shapes = {"self_attn.q_proj": (q_out, c["hidden"]), "self_attn.k_proj": (kv_out, c["hidden"]),
              "self_attn.v_proj": (kv_out, c["hidden"]), "self_attn.o_proj": (c["hidden"], q_out),
              "mlp.gate_proj": (c["inter"], c["hidden"]), "mlp.up_proj": (c["inter"], c["hidden"]),
              "mlp.down_proj": (c["hidden"], c["inter"]), "input_layernorm": (c["hidden"],),
              "post_attention_layernorm": (c["hidden"],)}
    for i in range(c["layers"]):
        for k, shape in shapes.items():
            hf[f"model.layers.{i}.{k}.weight"] = rng.standard_normal(shape, dtype=np.float32)

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(c["layers"])
    w.add_context_length(c["ctx"])
    w.add_embedding_length(c["hidden"])
    w.add_feed_forward_length(c["inter"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(TINY_SPECIALS) + [1] * (vocab - len(TINY_SPECIALS)))
    w.add_token_merges(TINY_MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(TINY_TEMPLATE)
    inv = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    w.add_tensor("token_embd.weight", hf["model.embed_tokens.weight"])
    for i in range(c["layers"]):
        for k, g in inv.items():
            t = hf[f"model.layers.{i}.{k}.weight"]
            if k == "self_attn.q_proj":
                t = llama_cpp_permute(t, c["heads"])
            elif k == "self_attn.k_proj":
                t = llama_cpp_permute(t, c["kv_heads"])
            w.add_tensor(f"blk.{i}.{g}.weight", np.ascontiguousarray(t))
    w.add_tensor("output_norm.weight", hf["model.norm.weight"])
    if not tied:
        w.add_tensor("output.weight", hf["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.fixture()
def tiny_gguf(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)
