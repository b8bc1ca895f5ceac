"""`python -m engine.kernels.build` (make kernels): every CPU kernel built ahead of the first engine start,
so that start neither waits for the compiler nor has it running beside the model (a torch extension's
compile peaks near 1.7 GB of RSS, more than the engine serving the default model)."""

from __future__ import annotations

import importlib
import pkgutil

import engine.kernels
from engine.kernels.cpp_extension import CppExtension


def build_all(progress: bool = True) -> list[str]:
    """Builds (or finds already built) every CppExtension the kernel modules define; returns the names
    that could not be built here, which run as the portable reference."""
    for mod in pkgutil.iter_modules(engine.kernels.__path__):
        if mod.name.startswith("cpu_"):
            importlib.import_module(f"engine.kernels.{mod.name}")
    exts = list(CppExtension.defined)
    if progress:
        from tqdm.auto import tqdm

        exts = tqdm(exts, desc="building CPU kernels", unit="kernel")
    return [ext.name for ext in exts if not ext.available()]


if __name__ == "__main__":
    missing = build_all()
    if missing:
        print(f"not built here (the portable reference serves them): {', '.join(missing)}")
