"""Ahead-of-time building of the CPU kernels (`make kernels`): every csrc/*.cpp is one registered
extension, so building them all leaves none to compile at the first engine start."""

from __future__ import annotations

from engine.kernels import build, cpp_extension


def test_build_all_covers_every_kernel_source():
    missing = build.build_all(progress=False)
    sources = {ext.source.name for ext in cpp_extension.CppExtension.defined}
    assert sources == {p.name for p in cpp_extension.CSRC.glob("*.cpp")}
    names = [ext.name for ext in cpp_extension.CppExtension.defined]
    assert len(names) == len(set(names))
    assert set(missing) <= set(names)
    assert all(ext.available() for ext in cpp_extension.CppExtension.defined if ext.name not in missing)
