from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

from engine.loader.model_registry import ResolvedModel, gguf_cache_dir, list_models, resolve_model
from engine.models.synthetic import SYNTHETIC_SHAPES
from server.cli import main as cli_main

from .conftest import TINY


def test_list_models_reports_prepared_default(default_dir):
    models = {m["name"]: m for m in list_models()}
    m = models["smollm2-135m-instruct"]
    assert m["prepared"] is True and m["path"] == str(default_dir) and m["description"]


def test_list_models_unprepared_in_empty_home(tmp_path):
    (m,) = list_models(home=tmp_path)
    assert m["prepared"] is False and m["path"].startswith(str(tmp_path))


@pytest.mark.parametrize("spec", ["default", "smollm2-135m-instruct", None])
def test_registered_name_and_alias(default_dir, spec):
    r = resolve_model(spec)
    assert r.kind == "hf_dir" and r.path == default_dir and r.tokenizer_dir == default_dir
    assert r.name == "smollm2-135m-instruct"
    assert r.arch.num_layers == 30 and r.arch.hidden_size == 576 and r.arch.tie_word_embeddings


def test_resolved_model_is_frozen(default_dir):
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolve_model("default").name = "x"


def test_hf_directory_path(default_dir, tmp_path):
    d = tmp_path / "my-llama"
    d.mkdir()
    shutil.copy(default_dir / "config.json", d / "config.json")
    r = resolve_model(str(d))
    assert r == ResolvedModel("hf_dir", d, r.arch, d, "my-llama")
    assert r.arch.num_kv_heads == 3


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("shape", sorted(SYNTHETIC_SHAPES))
def test_synthetic(default_dir, shape):
    r = resolve_model(f"synthetic:{shape}")
    assert r.kind == "synthetic" and r.path is None and r.name == f"synthetic:{shape}"
    assert r.arch == SYNTHETIC_SHAPES[shape] and r.tokenizer_dir == default_dir


def test_unknown_spec_lists_what_is_accepted():
    with pytest.raises(ValueError) as exc:
        resolve_model("gpt-17")
    msg = str(exc.value)
    for part in ("gpt-17", "default", "smollm2-135m-instruct", "synthetic:tiny", ".gguf", "directory"):
        assert part in msg
    with pytest.raises(ValueError, match="known shapes: .*tiny"):
        resolve_model("synthetic:nope")


def test_gguf_file_is_converted_once_and_keyed_by_mtime(tiny_gguf, tessera_home):
    path, _ = tiny_gguf
    r = resolve_model(str(path), progress=False)
    assert r.kind == "hf_dir" and r.name == "tiny-llama" and r.tokenizer_dir == r.path
    assert r.path.parent == tessera_home / "models" / "gguf"
    assert (r.arch.hidden_size, r.arch.num_layers, r.arch.num_heads) == (TINY["hidden"], TINY["layers"], 4)
    first_mtime = (r.path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(path), progress=False).path == r.path
    assert (r.path / "model.safetensors").stat().st_mtime_ns == first_mtime
    # A replaced file (new mtime) must not be served from the stale conversion.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert gguf_cache_dir(path) != r.path
    assert resolve_model(str(path), progress=False).path == gguf_cache_dir(path)


def test_cli_models_list_and_prepare(default_dir, capsys):
    assert cli_main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "NAME" in out and "smollm2-135m-instruct" in out and "yes" in out and str(default_dir) in out
    assert cli_main(["models", "prepare", "default", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(default_dir)
    assert cli_main(["models", "prepare", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
