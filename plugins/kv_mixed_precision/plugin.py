"""`kv_mixed_precision`: layer-wise mixed-precision quantized KV cache (KVTuner). Through the `kv_spec`
hook every layer gets its own (key bits, value bits) pair and a quantized storage layout; the engine
sizes the cache from the real bytes of those specs, so fewer bits give more blocks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from engine.kv_spec import KVSpec
from plugins.base import Plugin
from plugins.kv_mixed_precision import kivi_storage, per_token_storage  # noqa: F401  (register storages)
from plugins.kv_mixed_precision.config import MODES, LayerBits, load_yaml, mean_bits, parse_layers, uniform
from plugins.registry import register_plugin


@register_plugin("kv_mixed_precision")
@dataclass
class KVMixedPrecisionPlugin(Plugin):
    # exactly one of: a uniform preset (kv8, k8v4, kv4, ...), a layer -> {key_bits, value_bits} mapping,
    # or `config`, the path of a YAML file holding these same options (what `tessera calibrate kv` writes)
    preset: str | None = None
    layers: dict | None = None
    config: str | None = None
    mode: str = "kivi"  # kivi | per_token
    group_size: int = 16  # channels per scale/minimum pair along the head dimension (at most head_dim)
    calibration: dict = field(default_factory=dict)  # measured fidelity of a searched config (informational)

    hooks = frozenset({"kv_spec"})

    def __post_init__(self) -> None:
        if self.config is not None:
            data = load_yaml(self.config)
            if "config" in data:
                raise ValueError(f"{self.config}: a config file must not name another config file")
            unknown = set(data) - {f.name for f in dataclasses.fields(self)}
            if unknown:
                raise ValueError(f"{self.config}: unknown option(s) {sorted(unknown)}")
            for key, value in data.items():
                setattr(self, key, value)
            self.config = None
        if (self.preset is None) == (self.layers is None):
            raise ValueError("kv_mixed_precision needs exactly one of `preset`, `layers` or `config`")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")
        self._fixed = parse_layers(self.layers) if self.layers is not None else None
        if self.preset is not None:
            uniform(self.preset, 1)  # validates the name
        self.assignment: dict[int, LayerBits] = {}

    def bits_of(self, layer: int) -> LayerBits:
        if self._fixed is None:
            return uniform(self.preset, layer + 1)[layer]
        try:
            return self._fixed[layer]
        except KeyError:
            raise ValueError(f"kv_mixed_precision: no bits given for layer {layer}") from None

    def kv_spec(self, layer: int, default: KVSpec) -> KVSpec:
        bits = self.bits_of(layer)
        self.assignment[layer] = bits
        if bits.key_bits == 16 and bits.value_bits == 16:
            return default
        group = min(self.group_size, default.head_dim)  # a group never spans two heads
        if default.head_dim % group:
            raise ValueError(f"group_size {self.group_size} does not divide head_dim {default.head_dim}")
        storage = "kv_kivi" if self.mode == "kivi" and bits.key_bits != 16 else "kv_per_token"
        return dataclasses.replace(default, storage=storage, key_bits=bits.key_bits, value_bits=bits.value_bits,
                                   group_size=group, quant_mode=self.mode)

    def setup(self, engine) -> None:
        n = engine.arch.num_layers
        if self._fixed is not None and max(self._fixed, default=-1) >= n:
            raise ValueError(f"kv_mixed_precision: config names layer {max(self._fixed)} but the model has {n}")

    @property
    def mean_bits(self) -> float:
        return mean_bits(self.assignment)
