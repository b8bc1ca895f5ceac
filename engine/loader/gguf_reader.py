"""Read a llama-architecture GGUF file into the pieces of a Hugging Face model directory: a config
dict, HF-named float32 tensors, and a `tokenizers` tokenizer with its tokenizer_config.

Everything downstream (model code, tokenizer, registry) only understands HF directories, so GGUF is
handled purely as an import format: dequantize once, write safetensors, forget GGUF existed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

# GGUF token types (llama.cpp's llama_token_type); only these two matter for the HF tokenizer.
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4

# Pre-tokenizer regexes llama.cpp keys by `tokenizer.ggml.pre`. They are not stored in the GGUF, so
# the ones we can reproduce exactly are listed here; anything else is refused rather than silently
# tokenizing differently from the model's training.
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class GGUFFile:
    """Thin view over `gguf.GGUFReader` for the llama architecture."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.reader = GGUFReader(str(self.path))
        self.arch = str(self.field("general.architecture", "llama"))
        if self.arch != "llama":
            raise ValueError(f"{self.path.name}: GGUF architecture {self.arch!r} is not supported (only 'llama')")
        self.tensors = {t.name: t for t in self.reader.tensors}

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        if f.types and f.types[0] == GGUFValueType.ARRAY:
            return list(f.contents())
        return f.contents()

    def hparam(self, key: str, default=None):
        return self.field(f"{self.arch}.{key}", default)


def _f32(value) -> float:
    # GGUF stores these as float32; the shortest float32 repr gives back the author's 1e-05, not
    # 9.999999747378752e-06, so configs compare equal to the published ones.
    return float(str(np.float32(value)))


def read_config(gf: GGUFFile) -> dict:
    """HF config.json content (LlamaForCausalLM) from the GGUF hyper-parameters."""
    hidden = int(gf.hparam("embedding_length"))
    n_head = int(gf.hparam("attention.head_count"))
    n_kv = int(gf.hparam("attention.head_count_kv", n_head))
    head_dim = int(gf.hparam("attention.key_length", hidden // n_head))
    tokens = gf.field("tokenizer.ggml.tokens") or []
    vocab = int(gf.hparam("vocab_size", 0) or len(tokens) or gf.tensors["token_embd.weight"].shape[1])
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(gf.hparam("feed_forward_length")),
        "num_hidden_layers": int(gf.hparam("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rope_theta": _f32(gf.hparam("rope.freq_base", 10000.0)),
        "rms_norm_eps": _f32(gf.hparam("attention.layer_norm_rms_epsilon", 1e-5)),
        "max_position_embeddings": int(gf.hparam("context_length", 2048)),
        # llama.cpp drops output.weight when the head shares the embedding matrix.
        "tie_word_embeddings": "output.weight" not in gf.tensors,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    scale = gf.hparam("rope.scaling.factor")
    if gf.hparam("rope.scaling.type") == "linear" and scale:
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(scale)}
    for key in ("bos", "eos", "padding"):
        tid = gf.field(f"tokenizer.ggml.{key}_token_id")
        if tid is not None:
            cfg["pad_token_id" if key == "padding" else f"{key}_token_id"] = int(tid)
    return cfg


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute(w, n_head, n_head_kv)` applied to q_proj/k_proj by its converter.

    w: [n_head * head_dim, hidden]. llama.cpp interleaves the two rotary halves of every head
    (GPT-J style pairs) while HF rotates the first half against the second half, so each head's rows
    go from (head_dim/2, 2) order back to (2, head_dim/2). Pass num_kv_heads for k_proj."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LAYER_MAP = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_MAP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}


def hf_tensor_name(gguf_name: str) -> str | None:
    """HF parameter name for a GGUF tensor name; None for tensors HF has no parameter for (rope_freqs)."""
    if gguf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_MAP:
        return f"model.layers.{parts[1]}.{_LAYER_MAP[parts[2]]}.{parts[3]}"
    return None


def num_tensors(gf: GGUFFile) -> int:
    return sum(hf_tensor_name(n) is not None for n in gf.tensors)


def iter_hf_tensors(gf: GGUFFile, cfg: dict | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, float32 tensor) in file order; tensors come out in HF layout [out, in]."""
    cfg = cfg or read_config(gf)
    for name, t in gf.tensors.items():
        hf_name = hf_tensor_name(name)
        if hf_name is None:
            continue
        # GGUF lists dims fastest-first (ne0 = in_features); numpy/HF order is the reverse.
        shape = tuple(int(d) for d in reversed(t.shape))
        arr = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if hf_name.endswith("q_proj.weight"):
            arr = unpermute_rotary(arr, cfg["num_attention_heads"])
        elif hf_name.endswith("k_proj.weight"):
            arr = unpermute_rotary(arr, cfg["num_key_value_heads"])
        # Copy: F32 tensors are read-only views of the memory-mapped file.
        yield hf_name, torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=True))


def _pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("gpt-2", "gpt2", "default", "starcoder", "refact"):
        return byte_level
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    regex = {"llama-bpe": _LLAMA3_REGEX, "llama3": _LLAMA3_REGEX, "qwen2": _QWEN2_REGEX}.get(pre)
    if regex is None:
        raise ValueError(f"GGUF tokenizer pre-tokenizer {pre!r} is not supported "
                         "(supported: gpt-2, smollm, starcoder, llama-bpe, qwen2)")
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def build_tokenizer(gf: GGUFFile) -> HFTokenizer:
    """Byte-level BPE `tokenizers.Tokenizer` equivalent to the GGUF's gpt2-style vocabulary."""
    model = gf.field("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"GGUF tokenizer model {model!r} is not supported (only byte-level BPE 'gpt2')")
    tokens = [str(t) for t in gf.field("tokenizer.ggml.tokens")]
    types = [int(t) for t in gf.field("tokenizer.ggml.token_type") or [1] * len(tokens)]
    merges = [tuple(m.split(" ", 1)) for m in gf.field("tokenizer.ggml.merges") or []]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(str(gf.field("tokenizer.ggml.pre", "gpt-2")))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens must never be split by BPE and are dropped by skip_special_tokens.
    added = [AddedToken(tokens[i], special=types[i] == _TOKEN_CONTROL, normalized=False)
             for i in range(len(tokens)) if types[i] in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)]
    tok.add_tokens(added)
    return tok


def _token(tokens: list[str], tid) -> str | None:
    return tokens[int(tid)] if tid is not None and 0 <= int(tid) < len(tokens) else None


def tokenizer_config(gf: GGUFFile, cfg: dict) -> dict:
    """tokenizer_config.json content; token strings rather than ids because that is what HF expects."""
    tokens = [str(t) for t in gf.field("tokenizer.ggml.tokens")]
    out = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _token(tokens, cfg.get("bos_token_id")),
        "eos_token": _token(tokens, cfg.get("eos_token_id")),
        "pad_token": _token(tokens, cfg.get("pad_token_id")),
        "unk_token": _token(tokens, gf.field("tokenizer.ggml.unknown_token_id")),
        # The tokenizer.json has no BOS post-processor; HF chat templates add their own markers.
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
    }
    template = gf.field("tokenizer.chat_template")
    if template:
        out["chat_template"] = str(template)
    return out


def generation_config(cfg: dict) -> dict:
    out = {"_from_model_config": True, "do_sample": False}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if cfg.get(key) is not None:
            out[key] = cfg[key]
    return out


def write_hf_dir(gguf_path: str | Path, out_dir: str | Path,
                 progress: Callable[[Iterator], Iterator] | None = None) -> Path:
    """Convert a GGUF into an HF directory at out_dir (not atomic; callers rename into place).

    progress wraps the tensor iterator (e.g. a tqdm factory) and receives `total=` as keyword."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gf = GGUFFile(gguf_path)
    cfg = read_config(gf)
    it = iter_hf_tensors(gf, cfg)
    if progress is not None:
        it = progress(it, total=num_tensors(gf))
    save_file(dict(it), str(out / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(gf).save(str(out / "tokenizer.json"))
    for name, content in (("config.json", cfg), ("tokenizer_config.json", tokenizer_config(gf, cfg)),
                          ("generation_config.json", generation_config(cfg))):
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
