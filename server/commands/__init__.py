"""One module per `tessera` subcommand. Each exposes `register(subparsers)` which adds its parser
and sets `func=run` on it."""

COMMANDS = ("generate", "models", "bench", "serve", "calibrate", "eval")
