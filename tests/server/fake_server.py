"""`python -m tests.server.fake_server --port P [settings...]`: the real uvicorn server and shutdown
handling of `tessera serve`, on the fake backend. Process-level tests (disconnects, overload, SIGTERM)
run against it in seconds; the acceptance tests repeat them on the real engine."""

from __future__ import annotations

import argparse
import sys

from server.commands.serve import serve
from server.settings import ServerSettings
from tests.server.fake_backend import FakeBackend


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token-delay", type=float, default=0.01)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    p.add_argument("--api-key", default=None)
    args = p.parse_args()
    backend = FakeBackend(token_delay=args.token_delay, max_num_seqs=args.max_num_seqs)
    settings = ServerSettings(port=args.port, max_num_seqs=args.max_num_seqs, max_queue=args.max_queue,
                              shutdown_timeout=args.shutdown_timeout, api_key=args.api_key)
    return serve(backend, settings, log_level="warning", access_log=False)


if __name__ == "__main__":
    sys.exit(main())
