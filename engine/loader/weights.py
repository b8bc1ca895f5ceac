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

    Reads with plain file reads instead of a memory map: mapped pages count towards the process's
    resident set, so mapping a shard while its copy is built would double peak memory."""
    for f in safetensors_files(path_dir):
        yield from _read_shard(f)


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool}


def _read_shard(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        if header_len <= 0 or header_len > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file (header length {header_len})")
        header = json.loads(fh.read(header_len))
        base = 8 + header_len
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        for name, info in entries:
            if info["dtype"] not in _ST_DTYPES:
                # rare dtypes (fp8...) go through the reference reader
                with safe_open(str(path), framework="pt", device="cpu") as st:
                    yield name, st.get_tensor(name)
                continue
            start, end = info["data_offsets"]
            t = torch.empty(info["shape"], dtype=_ST_DTYPES[info["dtype"]])
            nbytes = t.numel() * t.element_size()
            if nbytes != end - start:
                raise ValueError(f"{path}: tensor {name!r} has {end - start} bytes, expected {nbytes}")
            fh.seek(base + start)
            if nbytes and fh.readinto(t.reshape(-1).view(torch.uint8).numpy()) != nbytes:
                raise ValueError(f"{path}: truncated data for tensor {name!r}")
            yield name, t


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
