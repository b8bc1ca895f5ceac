"""`make loadtest`: start `tessera serve` on a free 127.0.0.1 port, run locust headless against it for a
bounded time and user count, sample the server's memory (RSS) meanwhile, stop the server with SIGTERM,
and write benchmarks/results/loadtest{_stats.csv,_failures.csv,...,.html,.json,-server.log}.

Memory: RSS (the server process and its children) is sampled every --rss-interval seconds from the
moment locust starts. The figure that matters is the growth between the end of the first half of the
run and its end, which for the default 2 minutes is the end of minute 1 against the end of minute 2;
runs of at least 2 minutes fail when it exceeds --max-rss-growth (5%), shorter ones only report it.

Exit status: 0 only when locust succeeded, no request failed, the server stopped cleanly (exit code 0)
and the RSS growth check (when it applies) passed."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))


def parse_duration(text: str) -> float:
    """locust's -t syntax: 90, 90s, 2m, 1h30m, 1m30s -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {text!r}; use e.g. 30s, 2m, 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float, log: Path) -> float:
    import httpx

    t0 = time.monotonic()
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before /ready; see {log}")
            try:
                if client.get(base + "/ready").status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
    raise RuntimeError(f"server not ready after {timeout:.0f} s; see {log}")


class RssSampler(threading.Thread):
    """Samples the RSS (bytes) of a process and its descendants every `interval` seconds."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (seconds since start, rss)
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def rss(self) -> int | None:
        import psutil

        try:
            total = self.proc.memory_info().rss
            for child in self.proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return None

    def sample(self) -> None:
        value = self.rss()
        if value is not None:
            self.samples.append((round(time.monotonic() - self.t0, 2), value))

    def run(self) -> None:
        self.sample()
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.interval + 5)
        self.sample()


def rss_growth(samples: list[tuple[float, int]], duration: float) -> dict:
    """RSS at the end of the first half of the run against RSS at its end (minute 1 vs minute 2 for 2m)."""
    during = [s for s in samples if s[0] <= duration + 1.0] or samples
    if len(during) < 2:
        return {"mid_s": None, "end_s": None, "rss_mid_mb": None, "rss_end_mb": None, "growth_pct": None}
    mid_t = duration / 2
    mid = min(during, key=lambda s: abs(s[0] - mid_t))
    end = during[-1]
    return {"mid_s": mid[0], "end_s": end[0], "rss_mid_mb": round(mid[1] / 2**20, 1),
            "rss_end_mb": round(end[1] / 2**20, 1),
            "growth_pct": round(100.0 * (end[1] - mid[1]) / mid[1], 2) if mid[1] else None}


def _percentile(buckets: dict, q: float) -> float | None:
    """q-th percentile of locust's response-time histogram {ms (rounded): count}."""
    items = sorted((float(k), int(v)) for k, v in buckets.items())
    total = sum(c for _, c in items)
    if not total:
        return None
    rank = q / 100.0 * total
    seen = 0
    for value, count in items:
        seen += count
        if seen >= rank:
            return value
    return items[-1][0]


def read_final_stats(json_path: Path) -> list[dict]:
    """Per-entry stats from locust's --json-file, written after every user stopped (the CSV files are
    written every second and can miss the requests that finished during the stop timeout)."""
    if not json_path.exists():
        return []
    rows = []
    for e in json.loads(json_path.read_text()):
        n = e.get("num_requests") or 0
        span = max((e.get("last_request_timestamp") or 0) - (e.get("start_time") or 0), 1e-9)
        buckets = e.get("response_times") or {}
        rows.append({"type": e.get("method"), "name": e.get("name"), "requests": n,
                     "failures": e.get("num_failures") or 0,
                     "avg_ms": round(e["total_response_time"] / n, 2) if n else None,
                     "p50_ms": _percentile(buckets, 50), "p95_ms": _percentile(buckets, 95),
                     "p99_ms": _percentile(buckets, 99), "max_ms": e.get("max_response_time"),
                     "rps": round(n / span, 3) if n > 1 else None})
    return rows


def read_stats(csv_path: Path) -> list[dict]:
    if not csv_path.exists():
        return []
    rows = []
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            def num(key, cast=float, row=row):
                try:
                    return cast(row[key])
                except (KeyError, ValueError, TypeError):
                    return None
            rows.append({"type": row.get("Type"), "name": row.get("Name"),
                         "requests": num("Request Count", int), "failures": num("Failure Count", int),
                         "avg_ms": num("Average Response Time"), "p50_ms": num("50%"), "p95_ms": num("95%"),
                         "p99_ms": num("99%"), "max_ms": num("Max Response Time"),
                         "rps": num("Requests/s"), "failures_per_s": num("Failures/s")})
    return rows


def read_failures(csv_path: Path) -> list[dict]:
    if not csv_path.exists():
        return []
    with csv_path.open(newline="") as f:
        return [{"method": r.get("Method"), "name": r.get("Name"), "error": r.get("Error"),
                 "occurrences": int(r.get("Occurrences") or 0)} for r in csv.DictReader(f)]


def stop_server(proc: subprocess.Popen, grace: float) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=int(os.environ.get("LOADTEST_USERS", 32)))
    p.add_argument("--spawn-rate", type=float, default=float(os.environ.get("LOADTEST_SPAWN_RATE", 8)))
    p.add_argument("--time", default=os.environ.get("LOADTEST_TIME", "2m"), help="locust -t (30s, 2m, ...)")
    p.add_argument("--max-tokens", type=int, default=int(os.environ.get("LOADTEST_MAX_TOKENS", 64)))
    p.add_argument("--rss-interval", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--max-rss-growth", type=float, default=5.0,
                   help="fail when RSS grows more than this %% from mid-run to the end (runs of >= 2 min)")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--prefix", default=str(RESULTS / "loadtest"), help="output path prefix")
    p.add_argument("--serve-arg", action="append", default=[], help="extra argument for tessera serve")
    p.add_argument("--base-url", default=None,
                   help="test an already running server instead of starting one (no RSS, no SIGTERM)")
    args = p.parse_args(argv)

    duration = parse_duration(args.time)
    prefix = Path(args.prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    server_log = Path(str(prefix) + "-server.log")
    summary: dict = {"config": {"users": args.users, "spawn_rate": args.spawn_rate, "time": args.time,
                                "duration_s": duration, "max_tokens": args.max_tokens}}
    problems: list[str] = []

    proc = None
    sampler = None
    if args.base_url:
        base = args.base_url.rstrip("/")
    else:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--disable-access-log", *args.serve_arg]
        summary["server"] = {"command": cmd, "log": str(server_log)}
        print(f"loadtest: starting {' '.join(cmd)} (log {server_log})", flush=True)
        log = server_log.open("wb")
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    locust_rc = None
    try:
        if proc is not None:
            startup = wait_ready(base, proc, args.ready_timeout, server_log)
            summary["server"]["startup_s"] = round(startup, 1)
            print(f"loadtest: server ready at {base} after {startup:.1f} s", flush=True)
            sampler = RssSampler(proc.pid, args.rss_interval)
        locust_cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"),
                      "--headless", "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.time,
                      "-H", base, "--csv", str(prefix), "--html", str(prefix) + ".html", "--only-summary",
                      "--json-file", str(prefix) + "_locust", "--stop-timeout", "120"]
        env = {**os.environ, "LOADTEST_MAX_TOKENS": str(args.max_tokens)}
        print(f"loadtest: {' '.join(locust_cmd)}", flush=True)
        if sampler is not None:
            sampler.start()
        t0 = time.monotonic()
        locust_rc = subprocess.run(locust_cmd, cwd=REPO, env=env).returncode
        summary["locust"] = {"exit_code": locust_rc, "wall_s": round(time.monotonic() - t0, 1)}
    except RuntimeError as exc:
        problems.append(str(exc))
    finally:
        if sampler is not None and sampler.is_alive():
            try:
                sampler.stop()
            except Exception as exc:  # noqa: BLE001 - the server must be stopped whatever happens
                problems.append(f"RSS sampler: {exc}")
        if proc is not None:
            code = stop_server(proc, grace=90.0)
            summary["server"]["exit_code"] = code
            print(f"loadtest: server stopped with SIGTERM, exit code {code}", flush=True)
            if code != 0:
                problems.append(f"server exit code {code} after SIGTERM")
            if problems and server_log.exists():
                print("\n".join(server_log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)

    if locust_rc is not None and locust_rc != 0:
        problems.append(f"locust exit code {locust_rc}")
    stats = read_final_stats(Path(str(prefix) + "_locust.json")) or read_stats(Path(str(prefix) + "_stats.csv"))
    summary["stats"] = stats
    summary["failures"] = read_failures(Path(str(prefix) + "_failures.csv"))
    http = [r for r in stats if r["type"] in ("POST", "GET")]
    summary["requests"] = sum(r["requests"] or 0 for r in http)
    summary["failed"] = sum(r["failures"] or 0 for r in stats if r["name"] != "Aggregated")
    if summary["failed"]:
        problems.append(f"{summary['failed']} failed request(s)")
    if locust_rc is not None and summary["requests"] == 0:
        problems.append("no request completed")

    if sampler is not None:
        summary["rss_samples_mb"] = [[t, round(v / 2**20, 1)] for t, v in sampler.samples]
        growth = rss_growth(sampler.samples, duration)
        growth["checked"] = duration >= 120
        growth["max_growth_pct"] = args.max_rss_growth
        summary["rss"] = growth
        if growth["growth_pct"] is not None:
            print(f"loadtest: RSS {growth['rss_mid_mb']} MB at {growth['mid_s']} s -> {growth['rss_end_mb']} MB "
                  f"at {growth['end_s']} s: {growth['growth_pct']:+.2f}%"
                  + ("" if growth["checked"] else " (not checked: run shorter than 2 minutes)"), flush=True)
            if growth["checked"] and growth["growth_pct"] > args.max_rss_growth:
                problems.append(f"RSS grew {growth['growth_pct']}% > {args.max_rss_growth}%")

    print(f"  {'TYPE':5s} {'NAME':32s} {'N':>7s} {'FAIL':>5s} {'P50 MS':>9s} {'P95 MS':>9s} {'P99 MS':>9s} "
          f"{'PER S':>7s}")
    for r in stats:
        if r["name"] == "Aggregated":
            continue
        cells = [f"{r[k]:9.0f}" if r[k] is not None else f"{'-':>9s}" for k in ("p50_ms", "p95_ms", "p99_ms")]
        rps = f"{r['rps']:7.2f}" if r["rps"] is not None else f"{'-':>7s}"
        print(f"  {r['type'] or '':5s} {r['name']:32s} {r['requests']:7d} {r['failures']:5d} {' '.join(cells)} {rps}")
    try:
        from benchmarks.report import machine_info

        summary["machine"] = machine_info()
    except Exception as exc:  # noqa: BLE001 - the summary matters more than the machine details
        summary["machine"] = {"error": str(exc)}
    summary["problems"] = problems
    summary["passed"] = not problems
    out = Path(str(prefix) + ".json")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"loadtest: wrote {out}, {prefix}.html and {prefix}_*.csv", flush=True)
    if problems:
        print("loadtest: FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("loadtest: passed (no failed request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
