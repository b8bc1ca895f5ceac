"""Ops by name and device type. `get_kernel(op, device_type)` returns the device kernel when one is
registered and its availability check passes, else the portable reference, so a missing or broken
device path degrades to correct-but-slower instead of failing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

REFERENCE = "reference"


@dataclass(frozen=True)
class KernelEntry:
    op: str
    device_type: str  # cpu | cuda | npu | reference
    fn: Callable
    available: Callable[[], bool] = lambda: True
    name: str = ""


class KernelRegistry:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], list[KernelEntry]] = {}

    def register(self, op: str, device_type: str, fn: Callable, available: Callable[[], bool] | None = None,
                 name: str = "") -> None:
        entry = KernelEntry(op, device_type, fn, available or (lambda: True), name or fn.__name__)
        self._entries.setdefault((op, device_type), []).insert(0, entry)

    def reference(self, op: str) -> Callable:
        entries = self._entries.get((op, REFERENCE))
        if not entries:
            raise KeyError(f"no reference implementation for op {op!r}")
        return entries[0].fn

    def get(self, op: str, device_type: str, prefer_reference: bool = False) -> Callable:
        if not prefer_reference:
            for entry in self._entries.get((op, device_type), []):
                try:
                    if entry.available():
                        return entry.fn
                except Exception:  # a broken toolchain must not take the engine down
                    continue
        return self.reference(op)

    def ops(self) -> list[str]:
        return sorted({op for op, _ in self._entries})

    def implementations(self, op: str) -> list[KernelEntry]:
        return [e for (o, _), es in self._entries.items() if o == op for e in es]


KERNELS = KernelRegistry()


def register_kernel(op: str, device_type: str, available: Callable[[], bool] | None = None, name: str = ""):
    def deco(fn: Callable) -> Callable:
        KERNELS.register(op, device_type, fn, available, name)
        return fn

    return deco


def get_kernel(op: str, device_type: str, prefer_reference: bool = False) -> Callable:
    _load_builtin_kernels()
    return KERNELS.get(op, device_type, prefer_reference)


def _load_builtin_kernels() -> None:
    # Imported lazily so the registry module itself has no heavy imports and no import cycles.
    from engine.kernels import (
        cpu_argmax,  # noqa: F401
        cpu_attention,  # noqa: F401
        cpu_elementwise,  # noqa: F401
        cpu_greedy_head,  # noqa: F401
        cpu_kivi_attention,  # noqa: F401
        cpu_linear,  # noqa: F401
        kv_quant,  # noqa: F401
        reference,  # noqa: F401
    )
    try:  # Triton is absent on CPU-only machines; the CUDA kernels then fall back to the reference
        from engine.kernels import (
            triton_activation,  # noqa: F401
            triton_attention,  # noqa: F401
            triton_linear,  # noqa: F401
            triton_norm,  # noqa: F401
            triton_rotary,  # noqa: F401
        )
    except ImportError:
        pass
