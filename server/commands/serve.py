"""`tessera serve`: the OpenAI-compatible HTTP server on the native engine."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from server.commands.plugin_args import add_plugin_args, plugin_specs

API_KEY_ENV = "TESSERA_API_KEY"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model over the OpenAI API",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="registered name, HF directory, .gguf file or synthetic:<shape> (default: the embedded "
                        "SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help=f"require `Authorization: Bearer KEY` (also ${API_KEY_ENV})")
    p.add_argument("--served-model-name", default=None, help="model name reported and accepted by the API")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests allowed to wait beyond --max-num-seqs before new ones get 429; -1: unbounded")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests may take to finish after SIGTERM before they are aborted")
    p.add_argument("--request-timeout", type=float, default=None, help="abort a request after this many seconds")
    p.add_argument("--cors-origins", nargs="+", default=[], metavar="ORIGIN",
                   help="allowed CORS origins (space or comma separated); CORS is off when none are given")
    add_plugin_args(p)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or npu")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together per step")
    p.add_argument("--max-num-batched-tokens", type=int, default=512, help="token budget of one engine step")
    p.add_argument("--max-model-len", type=int, default=None, help="context window (default: the model's)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--disable-access-log", action="store_true", help="no uvicorn line per request")
    p.set_defaults(func=run)


def build_settings(args: argparse.Namespace):
    from server.settings import ServerSettings

    return ServerSettings(
        host=args.host, port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        served_model_name=args.served_model_name,
        max_queue=None if args.max_queue is not None and args.max_queue < 0 else args.max_queue,
        max_num_seqs=args.max_num_seqs, shutdown_timeout=args.shutdown_timeout,
        request_timeout=args.request_timeout,
        cors_origins=tuple(o for value in args.cors_origins for o in _csv(value)),
        plugins=tuple(name for name, _ in plugin_specs(args)),
    )


def build_engine_config(args: argparse.Namespace):
    from engine.config import DeviceConfig, EngineConfig, ModelConfig, SchedulerConfig

    model = ModelConfig(dtype=args.dtype, max_model_len=args.max_model_len,
                        **({"model": args.model} if args.model else {}))
    return EngineConfig(model=model, device=DeviceConfig(device=args.device),
                        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs,
                                                  max_num_batched_tokens=args.max_num_batched_tokens),
                        plugins=plugin_specs(args))


def serve(backend, settings, log_level: str = "info", access_log: bool = True) -> int:
    """Runs the app on `backend` until SIGTERM/SIGINT has drained it; the process exit status."""
    import uvicorn

    from server.app import create_app
    from server.shutdown import GracefulServer

    app = create_app(backend, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            access_log=access_log, timeout_graceful_shutdown=5)
    server = GracefulServer(config, app.state.tessera)
    server.run()
    if not server.started:
        return 1  # startup failed (model did not load, port taken): uvicorn has logged why
    return 0


def run(args: argparse.Namespace) -> int:
    from engine.async_engine import AsyncEngine

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engine.loader.model_registry import resolve_model

    settings = build_settings(args)
    if settings.served_model_name is None:
        # The engine learns its model's name only once loaded; /v1/models and metrics need it from the
        # start. Resolving also prepares (converts) the default model on first use, before the bind.
        settings = dataclasses.replace(settings, served_model_name=resolve_model(args.model).name)
    backend = AsyncEngine(build_engine_config(args))
    return serve(backend, settings, args.log_level, access_log=not args.disable_access_log)
