"""loadtests/locustfile.py and loadtests/run.py against the fake OpenAI server of
tests/benchmarks/test_serve.py.

Locust monkey-patches the standard library with gevent the moment it is imported, so everything that
imports it runs in a subprocess, never in the pytest process."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.benchmarks.test_serve import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"

needs_locust = pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                  reason="locust not installed (pip install -e '.[load]')")

# Calls the user's tasks directly in a locust Environment and prints every request event as JSON.
DRIVER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from locust.env import Environment
    import locustfile

    locustfile.ChatUser.host = sys.argv[2]
    env = Environment(user_classes=[locustfile.ChatUser], host=sys.argv[2])
    seen = []
    def on_request(request_type, name, response_time, response_length, exception=None, **kw):
        seen.append({"type": request_type, "name": name, "ms": response_time,
                     "error": None if exception is None else str(exception)})
    env.events.request.add_listener(on_request)
    user = locustfile.ChatUser(env)
    user.on_start()
    for task in sys.argv[3].split(","):
        getattr(user, task)()
    print("EVENTS " + json.dumps({"model": user.model, "events": seen}))
""")


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer(delay=0.003) as server:
        yield server


def drive(fake, tasks: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", DRIVER, str(LOCUSTFILE.parent), fake.url, tasks],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LOADTEST_MAX_TOKENS": "6", **env}, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("EVENTS "))
    return json.loads(line[len("EVENTS "):])


@needs_locust
def test_stream_records_ttft_and_itl(fake):
    result = drive(fake, "chat_stream,chat")
    assert result["model"] == "fake-ok"  # first in /v1/models when LOADTEST_MODEL is unset
    events = result["events"]
    main = [e for e in events if e["type"] == "POST" and e["name"].endswith("[stream]")]
    ttft = [e for e in events if e["type"] == "TTFT"]
    itl = [e for e in events if e["type"] == "ITL"]
    plain = [e for e in events if e["type"] == "POST" and not e["name"].endswith("[stream]")]
    assert len(main) == 1 and main[0]["error"] is None
    assert len(ttft) == 1 and len(itl) == 5  # 6 tokens: one first token, five gaps
    # the request entry covers the whole stream, so it is longer than its TTFT
    assert 0 < ttft[0]["ms"] < main[0]["ms"] and all(e["ms"] > 0 for e in itl)
    assert len(plain) == 1 and plain[0]["error"] is None
    body = next(b for b in reversed(fake.state["bodies"]) if b.get("stream"))
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 6


@needs_locust
@pytest.mark.parametrize("model,reason", [("fake-500", "HTTP 500"), ("fake-nodone", "[DONE]"),
                                          ("fake-empty", "empty output")])
def test_stream_failures(fake, model, reason):
    events = drive(fake, "chat_stream", LOADTEST_MODEL=model)["events"]
    assert [e["type"] for e in events] == ["POST"]  # no TTFT/ITL from a failed request
    assert events[0]["error"] and reason in events[0]["error"]


@needs_locust
def test_run_py_headless_against_fake(fake, tmp_path):
    prefix = tmp_path / "lt"
    out = subprocess.run([sys.executable, str(REPO / "loadtests" / "run.py"), "--base-url", fake.url,
                          "--users", "3", "--spawn-rate", "3", "--time", "3s", "--max-tokens", "5",
                          "--prefix", str(prefix)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads((tmp_path / "lt.json").read_text())
    assert summary["passed"] and summary["failed"] == 0 and summary["requests"] > 0
    with open(tmp_path / "lt_stats.csv", newline="") as f:
        types = {row["Type"]: int(row["Request Count"]) for row in csv.DictReader(f)}
    assert types.get("TTFT", 0) > 0 and types.get("ITL", 0) > 0
    final = {row["type"]: row for row in summary["stats"]}  # from locust's final --json-file
    assert final["TTFT"]["requests"] > 0 and final["ITL"]["requests"] > 0
    # locust's own POST entry times only up to the response headers of a stream, so it is no bound on TTFT
    assert final["TTFT"]["p50_ms"] > 0 and final["POST"]["requests"] > 0
    assert (tmp_path / "lt.html").stat().st_size > 0


@needs_locust
def test_run_py_fails_on_failed_requests(fake, tmp_path):
    prefix = tmp_path / "bad"
    out = subprocess.run([sys.executable, str(REPO / "loadtests" / "run.py"), "--base-url", fake.url,
                          "--users", "2", "--spawn-rate", "2", "--time", "2s", "--prefix", str(prefix)],
                         capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "LOADTEST_MODEL": "fake-nodone"})
    assert out.returncode != 0
    summary = json.loads((tmp_path / "bad.json").read_text())
    assert not summary["passed"] and summary["failed"] > 0
    assert any("[DONE]" in f["error"] for f in summary["failures"])


def test_run_py_helpers():
    from loadtests.run import parse_duration, rss_growth

    assert parse_duration("2m") == 120 and parse_duration("30s") == 30 and parse_duration("1m30s") == 90
    assert parse_duration("45") == 45
    with pytest.raises(ValueError):
        parse_duration("2x")
    mb = 2**20
    samples = [(0.0, 100 * mb), (30.0, 150 * mb), (60.0, 200 * mb), (90.0, 204 * mb), (120.0, 206 * mb)]
    g = rss_growth(samples, 120.0)
    assert g["mid_s"] == 60.0 and g["end_s"] == 120.0 and g["growth_pct"] == 3.0
