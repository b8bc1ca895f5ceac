"""`tessera models list` and `tessera models prepare NAME`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list and prepare the registered models")
    actions = parser.add_subparsers(dest="models_action", required=True)
    p_list = actions.add_parser("list", help="show registered models and whether they are converted")
    p_list.set_defaults(func=run_list)
    p_prep = actions.add_parser("prepare", help="convert a model into the cache and print its directory")
    p_prep.add_argument("name", help="registered name (or 'default'), .gguf file, or HF directory")
    p_prep.add_argument("--quiet", action="store_true", help="no progress bar")
    p_prep.set_defaults(func=run_prepare)


def run_list(args: argparse.Namespace) -> int:
    from engine.loader.model_registry import list_models

    rows = [(m["name"], "yes" if m["prepared"] else "no", m["path"]) for m in list_models()]
    header = ("NAME", "PREPARED", "PATH")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    for r in [header, *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from engine.loader.model_registry import resolve_model

    if args.name.startswith("synthetic:"):
        raise ValueError("synthetic models have no files to prepare")
    resolved = resolve_model(args.name, progress=not args.quiet)
    print(resolved.path)
    return 0
