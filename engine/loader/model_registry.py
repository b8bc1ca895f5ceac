"""Turns a `--model` spec into something the engine can load: a registered name, a HF directory,
a .gguf file, or `synthetic:<shape>`."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.loader import default_model
from engine.models.arch import ModelArch
from engine.models.synthetic import SYNTHETIC_SHAPES, synthetic_arch

ALIASES = {"default": default_model.DEFAULT_MODEL_NAME}
SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True)
class ResolvedModel:
    kind: str  # "hf_dir" | "synthetic"
    path: Path | None  # the HF directory; None for synthetic models
    arch: ModelArch
    tokenizer_dir: Path  # synthetic models borrow the default model's tokenizer
    name: str  # what /v1/models reports


def list_models(home: str | Path | None = None) -> list[dict]:
    """Registered models and whether each is already converted into the cache."""
    out = []
    for name, (_pkg, _file, description) in default_model.EMBEDDED_MODELS.items():
        path = default_model.default_model_dir(name, home)
        out.append({"name": name, "description": description,
                    "prepared": default_model.is_prepared(path), "path": str(path)})
    return out


def _arch_of_dir(path: Path) -> ModelArch:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{path} is not a Hugging Face model directory (no config.json)")
    return ModelArch.from_hf_config(json.loads(cfg_file.read_text(encoding="utf-8")))


def _hf_dir(path: Path, name: str) -> ResolvedModel:
    return ResolvedModel(kind="hf_dir", path=path, arch=_arch_of_dir(path), tokenizer_dir=path, name=name)


def gguf_cache_dir(gguf_path: Path, home: str | Path | None = None) -> Path:
    """Cache directory for a converted .gguf; keyed by name, size and mtime so that replacing the
    file in place yields a fresh conversion instead of stale weights."""
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.name}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf_path.stem)
    return default_model.models_dir(home) / "gguf" / f"{stem}-{key}"


def _accepted() -> str:
    names = sorted([*default_model.EMBEDDED_MODELS, *ALIASES])
    shapes = ", ".join(f"{SYNTHETIC_PREFIX}{s}" for s in sorted(SYNTHETIC_SHAPES))
    return (f"accepted: a registered name ({', '.join(names)}), a Hugging Face model directory, "
            f"a .gguf file, or a synthetic shape ({shapes})")


def resolve_model(spec: str | None, home: str | Path | None = None, progress: bool = True) -> ResolvedModel:
    """Resolve a model spec, converting embedded / GGUF models into the cache on first use.
    None or "" means the default model."""
    spec = (spec or "default").strip()
    name = ALIASES.get(spec, spec)
    if name in default_model.EMBEDDED_MODELS:
        return _hf_dir(default_model.ensure_model_dir(name, home, progress=progress), name)
    if spec.startswith(SYNTHETIC_PREFIX):
        arch = synthetic_arch(spec[len(SYNTHETIC_PREFIX):])
        tok_dir = default_model.ensure_model_dir(home=home, progress=progress)
        return ResolvedModel(kind="synthetic", path=None, arch=arch, tokenizer_dir=tok_dir, name=spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _hf_dir(path.resolve(), path.resolve().name)
    if path.is_file() and path.suffix.lower() == ".gguf":
        target = default_model.prepare_from_gguf(path, gguf_cache_dir(path.resolve(), home), progress=progress)
        return _hf_dir(target, path.stem)
    raise ValueError(f"unknown model {spec!r}; {_accepted()}")
