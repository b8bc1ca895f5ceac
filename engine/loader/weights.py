"""Reading safetensors weights from a HF model directory, one tensor at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"


def safetensors_files(path_dir: str | Path) -> list[Path]:
    """The shard files of a model directory, in a stable order.

    When the index exists it is the authority: a directory may also hold stray shards (e.g. a
    consolidated copy) that would otherwise load every tensor twice."""
    d = Path(path_dir)
    index = d / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (d / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{d}: shards named in {INDEX_FILE} are missing: {', '.join(missing)}")
        return [d / n for n in names]
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{d}: no *.safetensors files")
    return files


def iter_safetensors(path_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every tensor of every shard, in the dtype stored on disk (CPU).

    Memory-maps one shard at a time so peak memory stays at one tensor, not the whole model."""
    for f in safetensors_files(path_dir):
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for name in st.keys():
                yield name, st.get_tensor(name)


def load_state_dict(path_dir: str | Path, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a model directory, cast to dtype (floating tensors only; None keeps the stored
    dtype) and moved to device."""
    out: dict[str, torch.Tensor] = {}
    for name, t in iter_safetensors(path_dir):
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.to(device)
    return out
