"""The shared benchmark workload pieces: random prompts and the config-only HF directory."""

from __future__ import annotations

import pytest

from benchmarks import workload


def test_prompts_exact_length_no_special_ids_deterministic():
    from engine.loader.model_registry import resolve_model
    from engine.loader.tokenizer import Tokenizer

    resolved = resolve_model("synthetic:tiny", progress=False)
    tok = Tokenizer(resolved.tokenizer_dir)
    a = workload.random_prompts(tok, resolved.arch.vocab_size, 4, 33, seed=0)
    assert a == workload.random_prompts(tok, resolved.arch.vocab_size, 4, 33, seed=0)
    assert a != workload.random_prompts(tok, resolved.arch.vocab_size, 4, 33, seed=1)
    special = set(tok.all_special_ids) | set(tok.eos_token_ids)
    assert all(len(p) == 33 and not special & set(p) for p in a)
    assert all(0 <= t < resolved.arch.vocab_size for p in a for t in p)


def test_synthetic_config_dir_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from engine.loader.model_registry import resolve_model

    resolved = resolve_model("synthetic:tiny", progress=False)
    d = workload.write_hf_config_dir(resolved, tmp_path / "cfg")
    cfg = transformers.AutoConfig.from_pretrained(str(d))
    assert cfg.hidden_size == resolved.arch.hidden_size and cfg.num_hidden_layers == resolved.arch.num_layers
    assert (d / "tokenizer.json").is_file()
