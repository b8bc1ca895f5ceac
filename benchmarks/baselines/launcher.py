"""Runs the baseline scripts of this package (vllm_offline.py with vLLM's interpreter, hf_offline.py with
this one) as subprocesses for `tessera bench throughput`, offline, and reads back their result line and
generated tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.baselines import BASELINES_DIR, parse_result

REPO_ROOT = BASELINES_DIR.parent.parent
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
# vllm_offline.py's --cpu-mode per vLLM backend: "mp" leaves vLLM's own process layout and thread binding
# as they are, "inproc" is the small-machine tuning. On a GPU the two are the same run.
VLLM_CPU_MODES = {"vllm": "mp", "vllm_inproc": "inproc"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1"}


class BackendFailed(RuntimeError):
    """A backend could not finish the workload; the CLI reports it and exits 1."""


def run_baseline(kind: str, args, ctx: dict, concurrency: int, prompts_file: Path,
                 tmp: Path) -> tuple[dict, list[list[int]]]:
    """One timed run of baseline `kind` (a key of VLLM_CPU_MODES, or "hf") on the prompts in prompts_file:
    (its result line, the token ids it generated). Raises BackendFailed with the tail of its output."""
    model_dir, random_weights = ctx["hf_dir"], ctx["random_weights"]
    out_file = tmp / f"{kind}-c{concurrency}-tokens.json"
    common = ["--model-dir", str(model_dir), "--prompts", str(prompts_file), "--output-len",
              str(args.output_len), "--dtype", args.dtype, "--out", str(out_file), "--seed", str(args.seed)]
    if kind in VLLM_CPU_MODES:
        cmd = [args.vllm_python, str(BASELINES_DIR / "vllm_offline.py"), "--max-num-seqs",
               str(concurrency), "--cpu-mode", VLLM_CPU_MODES[kind], *common]
        if random_weights:
            cmd += ["--load-format", "dummy"]
        if args.vllm_eager:
            cmd.append("--eager")
    else:
        cmd = [sys.executable, str(BASELINES_DIR / "hf_offline.py"), "--batch-size", str(concurrency),
               *common]
        if random_weights:
            cmd += ["--random-weights"]
    if args.progress:
        cmd.append("--progress")
    env = {**os.environ, **OFFLINE_ENV}
    # stdout (vLLM's log lines and the result) is captured; stderr (progress bars) stays visible.
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env,
                              cwd=str(REPO_ROOT), timeout=args.timeout)
        stdout, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, rc = exc.stdout or "", f"timeout after {args.timeout} s"
        stdout = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout
    result = parse_result(stdout) if rc == 0 else None
    if result is None:
        tail = "\n".join(stdout.splitlines()[-30:])
        raise BackendFailed(f"{kind} baseline failed (exit {rc}); command: {' '.join(cmd)}\n"
                            f"last lines of its output:\n{tail}")
    tokens = json.loads(out_file.read_text())["token_ids"] if out_file.is_file() else []
    return result, tokens


def vllm_available(path: str) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)
