"""Per-layer (key bits, value bits) assignments: uniform presets, YAML files written by the calibration
search, and the bit/byte figures derived from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BITS = (2, 4, 8, 16)
MODES = ("per_token", "kivi")
PRESETS: dict[str, tuple[int, int]] = {
    "kv16": (16, 16), "kv8": (8, 8), "k8v4": (8, 4), "kv4": (4, 4), "k4v2": (4, 2), "k2v4": (2, 4), "kv2": (2, 2),
}


@dataclass(frozen=True, slots=True)
class LayerBits:
    key_bits: int
    value_bits: int

    def __post_init__(self) -> None:
        for name in ("key_bits", "value_bits"):
            if getattr(self, name) not in BITS:
                raise ValueError(f"{name} must be one of {BITS}, got {getattr(self, name)!r}")

    @property
    def mean(self) -> float:
        return (self.key_bits + self.value_bits) / 2

    @property
    def label(self) -> str:
        return f"K{self.key_bits}V{self.value_bits}"


def parse_layers(layers: dict, num_layers: int | None = None) -> dict[int, LayerBits]:
    """`{layer: {key_bits, value_bits}}` (keys may be strings, as YAML or JSON give them)."""
    if not isinstance(layers, dict):
        raise ValueError(f"layers must be a mapping layer -> {{key_bits, value_bits}}, got {type(layers).__name__}")
    out: dict[int, LayerBits] = {}
    for key, bits in layers.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"layer index must be an integer, got {key!r}") from None
        if layer < 0 or (num_layers is not None and layer >= num_layers):
            raise ValueError(f"layer {layer} is out of range for a model of {num_layers} layers")
        if not isinstance(bits, dict) or set(bits) != {"key_bits", "value_bits"}:
            raise ValueError(f"layer {layer}: expected {{key_bits, value_bits}}, got {bits!r}")
        out[layer] = LayerBits(int(bits["key_bits"]), int(bits["value_bits"]))
    return out


def uniform(preset: str, num_layers: int) -> dict[int, LayerBits]:
    try:
        k, v = PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}") from None
    return {i: LayerBits(k, v) for i in range(num_layers)}


def mean_bits(assignment: dict[int, LayerBits]) -> float:
    """Mean over layers and over keys/values of the nominal bits (16 = unquantized)."""
    return sum(b.mean for b in assignment.values()) / max(1, len(assignment))


def to_yaml_dict(assignment: dict[int, LayerBits], mode: str, group_size: int, extra: dict | None = None) -> dict:
    """A mapping that `--plugin-config kv_mixed_precision=PATH.yaml` accepts as the plugin's options."""
    data = {"mode": mode, "group_size": group_size,
            "layers": {i: {"key_bits": b.key_bits, "value_bits": b.value_bits} for i, b in sorted(assignment.items())}}
    if extra:
        data["calibration"] = extra
    return data


def load_yaml(path: str | Path) -> dict:
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping of kv_mixed_precision options")
    return data
