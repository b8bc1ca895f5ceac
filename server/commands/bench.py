"""`tessera bench <kind>`: each kind lives in benchmarks/<kind>.py and exposes `register(subparsers)`."""

from __future__ import annotations

import importlib

BENCHMARKS = ("throughput", "prefix", "serve", "roofline", "spec", "spec_bound", "capacity")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (JSON + PNG under benchmarks/results/)")
    sub = parser.add_subparsers(dest="bench_kind", required=True)
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"benchmarks.{name}":
                continue  # benchmark not built yet
            raise
        module.register(sub)
