"""Builds the small C++ CPU kernels under engine/kernels/csrc on first use, with the compiler already on
the machine, cached by torch under TORCH_EXTENSIONS_DIR. A kernel that cannot be built is simply absent:
the registry then serves the portable reference, so a machine without a compiler is slower, not broken."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path

log = logging.getLogger(__name__)
CSRC = Path(__file__).parent / "csrc"


def _cpu_tag() -> str:
    # -march=native code must never be reused on a different CPU: the build dir is keyed by its flags
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def fp32_rows(*ts) -> bool:
    """[T, H] float32 tensors with contiguous rows (rows may be strided): what the csrc kernels read."""
    import torch

    return all(t.dtype == torch.float32 and t.dim() == 2 and t.stride(1) == 1 for t in ts)


def fp32_heads(*ts) -> bool:
    """[T, heads, D] float32 tensors with contiguous heads within a token (tokens may be strided)."""
    import torch

    return all(t.dtype == torch.float32 and t.dim() == 3 and t.stride(2) == 1 and t.stride(1) == t.shape[2]
               for t in ts)


class CppExtension:
    """One csrc/*.cpp source, built once per process on first `load()`; set TESSERA_NO_CPP=1 to skip."""

    # every one defined, so engine/kernels/build.py can build them ahead of first use
    defined: list[CppExtension] = []

    def __init__(self, name: str, source: str) -> None:
        self.name, self.source = name, CSRC / source
        self._lock = threading.Lock()
        self._module = None
        self._failed = False
        CppExtension.defined.append(self)

    def load(self):
        """The compiled module, or None when it cannot be built here."""
        if self._module is not None or self._failed:
            return self._module
        with self._lock:
            if self._module is not None or self._failed:
                return self._module
            if os.environ.get("TESSERA_NO_CPP") == "1" or platform.machine() not in ("x86_64", "AMD64", "aarch64"):
                self._failed = True
                return None
            try:
                from torch.utils.cpp_extension import load

                # the build is keyed by the source and the shared headers it may include
                src = self.source.read_bytes() + b"".join(h.read_bytes() for h in sorted(CSRC.glob("*.h")))
                tag = hashlib.sha1(src).hexdigest()[:8]
                flags = ["-O3", "-fopenmp"] + (["-march=native"] if platform.machine() == "x86_64" else [])
                self._module = load(name=f"{self.name}_{_cpu_tag()}_{tag}", sources=[str(self.source)],
                                    extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as exc:  # no compiler, no ninja, headers missing...
                log.warning("C++ kernel %s unavailable, using the reference: %s", self.name, exc)
                self._failed = True
        return self._module

    def available(self) -> bool:
        return self.load() is not None
