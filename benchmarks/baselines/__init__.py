"""Baselines for `tessera bench throughput`, run as standalone subprocesses so that their memory,
threads and (for vLLM) Python environment never mix with the native engine's.

Both scripts share one protocol: they read the workload (prompt token ids) from a JSON file, time only
generation (model load and a short warmup excluded) and print one line
`TESSERA_RESULT {json}` on stdout. Outputs (generated token ids) go to `--out` when given."""

from __future__ import annotations

import json
from pathlib import Path

BASELINES_DIR = Path(__file__).resolve().parent
RESULT_PREFIX = "TESSERA_RESULT "


def parse_result(stdout: str) -> dict | None:
    """The last `TESSERA_RESULT {...}` line of a baseline's stdout, or None if there is none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None
