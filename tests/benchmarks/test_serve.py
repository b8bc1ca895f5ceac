"""`tessera bench serve` against a small fake OpenAI-compatible streaming server (uvicorn in a thread).

The fake counts prompt tokens as words (plus a fixed overhead for the chat template) and streams one
token per chunk. Its behaviour is chosen by the model name:
  fake-ok      normal streaming
  fake-flaky   every third streamed request gets HTTP 500 in OpenAI's error shape
  fake-nodone  the stream ends without `data: [DONE]`
  fake-empty   the stream carries no output text
  fake-500     every streamed request gets HTTP 500
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from server.cli import main as tessera_main

CHAT_OVERHEAD = 7
MODELS = ("fake-ok", "fake-flaky", "fake-nodone", "fake-empty", "fake-500")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_fake_app(state: dict):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "server_error", "param": None,
                                       "code": None}}, status_code=status)

    async def models(_: Request):
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"}
                                                        for m in MODELS]})

    async def ready(_: Request):
        return JSONResponse({"status": "ok"})

    async def generate(request: Request):
        body = await request.json()
        chat = request.url.path.endswith("/chat/completions")
        state["bodies"].append(body)
        model = body.get("model")
        if model not in MODELS:
            return error(404, f"model {model!r} not found")
        if chat:
            prompt = " ".join(m["content"] for m in body["messages"])
            prompt_tokens = len(prompt.split()) + CHAT_OVERHEAD
        else:
            prompt_tokens = len(body["prompt"].split())
        n = int(body.get("max_tokens") or 16)
        if not body.get("ignore_eos"):
            n = min(n, 12)  # the fake "model" says EOS after 12 tokens
        delay = state.get("delay", 0.002)
        if not body.get("stream"):
            text = " tok" * n
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length"})
            return JSONResponse({"id": "x", "object": "chat.completion" if chat else "text_completion",
                                 "model": model, "choices": [choice],
                                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                           "total_tokens": prompt_tokens + n}})
        state["streams"] += 1
        if model == "fake-500" or (model == "fake-flaky" and state["streams"] % 3 == 0):
            return error(500, "injected failure")

        async def events():
            def chunk(text: str | None, usage=None, finish=None) -> str:
                if usage is not None:
                    choices = []
                elif chat:
                    choices = [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]
                else:
                    choices = [{"index": 0, "text": text, "finish_reason": finish}]
                obj = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion",
                       "model": model, "choices": choices}
                if usage is not None:
                    obj["usage"] = usage
                return f"data: {json.dumps(obj)}\n\n"

            if chat:  # role-only first chunk, as real servers send: must not count as the first token
                yield ("data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "model": model,
                                              "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                                 "content": ""}}]}) + "\n\n")
            await asyncio.sleep(delay * 5)  # "prefill"
            if model != "fake-empty":
                for i in range(n):
                    yield chunk(" tok", finish="length" if i == n - 1 else None)
                    await asyncio.sleep(delay)
            completion = 0 if model == "fake-empty" else n
            if (body.get("stream_options") or {}).get("include_usage"):
                yield chunk(None, usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                         "total_tokens": prompt_tokens + completion})
            if model != "fake-nodone":
                yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[
        Route("/v1/models", models), Route("/ready", ready), Route("/health", ready),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/v1/chat/completions", generate, methods=["POST"]),
    ])


class FakeOpenAIServer:
    """Context manager: a fake server on 127.0.0.1 in a background thread; `.url`, `.state`."""

    def __init__(self, delay: float = 0.002):
        self.state = {"bodies": [], "streams": 0, "delay": delay}
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        import uvicorn

        config = uvicorn.Config(make_fake_app(self.state), host="127.0.0.1", port=self.port, log_level="error",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer() as server:
        yield server


def run_bench(tmp_path: Path, url: str, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "serve.json"
    rc = tessera_main(["bench", "serve", "--base-url", url, "--json", str(out), "--no-progress",
                       "--warmup", "1", *extra])
    return rc, json.loads(out.read_text())


def _check_shape(data: dict) -> None:
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(data[key]) >= {"mean", "p50", "p99"}, key
    for key in ("request_throughput", "output_tok_s", "goodput", "completed", "failed", "config", "machine"):
        assert key in data, key


def test_completions_metrics_are_sane(fake, tmp_path):
    rc, data = run_bench(tmp_path, fake.url, "--model", "fake-ok", "--num-requests", "12", "--concurrency", "4",
                         "--input-len", "40", "--output-len", "10")
    assert rc == 0
    _check_shape(data)
    assert data["completed"] == 12 and data["failed"] == 0
    assert data["mean_prompt_tokens"] == 40  # calibrated against usage.prompt_tokens
    assert data["mean_output_tokens"] == 10
    ttft, e2e, tpot, itl = data["ttft_ms"], data["e2e_ms"], data["tpot_ms"], data["itl_ms"]
    assert 0 < ttft["p50"] <= e2e["p50"] and ttft["mean"] <= e2e["mean"] and ttft["p99"] <= e2e["p99"]
    assert 0 < tpot["mean"] < e2e["mean"] and 0 < itl["p50"] <= itl["p99"]
    assert ttft["p50"] <= ttft["p99"] and e2e["p50"] <= e2e["p99"]
    assert data["request_throughput"] > 0 and data["output_tok_s"] > 0
    assert data["output_tok_s"] == pytest.approx(10 * data["request_throughput"], rel=0.02)
    assert data["goodput"] == data["request_throughput"]  # no SLO: every completed request counts
    assert (tmp_path / "serve.png").stat().st_size > 0
    streamed = [b for b in fake.state["bodies"] if b.get("stream") and b["model"] == "fake-ok"]
    assert streamed and all(b["stream_options"] == {"include_usage": True} and b["ignore_eos"] is True
                            and b["min_tokens"] == b["max_tokens"] for b in streamed)
    assert len({b["prompt"] for b in streamed}) == len(streamed)  # distinct prompts: no free prefix-cache hits


def test_chat_endpoint_and_first_model(fake, tmp_path):
    rc, data = run_bench(tmp_path, fake.url + "/v1", "--endpoint", "chat", "--num-requests", "6",
                         "--input-len", "30", "--output-len", "8", "--request-rate", "50", "--poisson")
    assert rc == 0
    assert data["config"]["model"] == "fake-ok"  # the first one in /v1/models
    assert data["completed"] == 6 and data["failed"] == 0
    assert data["mean_prompt_tokens"] == 30  # template overhead included
    assert data["config"]["prompt_words"] == 30 - CHAT_OVERHEAD
    # the role-only first chunk is not a token: TTFT includes the fake's 5-step "prefill"
    assert data["ttft_ms"]["min"] >= 5 * 2 * 0.9
    assert data["mean_output_tokens"] == 8


def test_500s_are_counted_as_failures(fake, tmp_path):
    rc, data = run_bench(tmp_path, fake.url, "--model", "fake-flaky", "--num-requests", "9",
                         "--concurrency", "3", "--output-len", "4", "--input-len", "16", "--warmup", "0")
    assert rc == 1
    assert data["completed"] + data["failed"] == 9
    assert data["failed"] == 3
    assert any("HTTP 500" in err and "injected failure" in err for err in data["errors"])
    assert data["goodput"] <= data["request_throughput"]


@pytest.mark.parametrize("model,reason", [("fake-nodone", "[DONE]"), ("fake-empty", "empty output")])
def test_broken_streams_fail(fake, tmp_path, model, reason):
    rc, data = run_bench(tmp_path, fake.url, "--model", model, "--num-requests", "3", "--output-len", "4",
                         "--input-len", "16")
    assert rc == 1
    assert data["completed"] == 0 and data["failed"] == 3
    assert any(reason in err for err in data["errors"])
    assert data["ttft_ms"]["p50"] is None


def test_slo_goodput(fake, tmp_path):
    rc, data = run_bench(tmp_path, fake.url, "--model", "fake-ok", "--num-requests", "4", "--output-len", "4",
                         "--input-len", "16", "--slo", "ttft_ms=0.001")
    assert rc == 0
    assert data["completed"] == 4 and data["goodput"] == 0.0
    assert data["config"]["slo"] == {"ttft_ms": 0.001}


def test_unreachable_server_fails_cleanly(tmp_path):
    out = tmp_path / "x.json"
    rc = tessera_main(["bench", "serve", "--base-url", f"http://127.0.0.1:{_free_port()}", "--json", str(out),
                       "--no-progress", "--model", "m", "--num-requests", "2"])
    assert rc != 0


def test_parse_slo_and_stats():
    from benchmarks.serve import parse_slo
    from benchmarks.serve_summary import _stats

    assert parse_slo("ttft_ms=500, tpot_ms=50") == {"ttft_ms": 500.0, "tpot_ms": 50.0}
    with pytest.raises(ValueError):
        parse_slo("latency=3")
    s = _stats([0.001 * i for i in range(1, 101)])
    assert s["p50"] == pytest.approx(50.5) and s["mean"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01)
    assert _stats([])["mean"] is None


def test_compare_starts_and_stops_each_server(tmp_path, monkeypatch):
    """--compare with both servers replaced by the fake (as a subprocess): one JSON with both and ratios."""
    import sys

    from benchmarks import serve_compare

    started = []

    def fake_command(args, port):
        started.append(port)
        return [sys.executable, __file__, "--serve", str(port)], {}

    monkeypatch.setattr(serve_compare, "native_command", fake_command)
    monkeypatch.setattr(serve_compare, "vllm_command", fake_command)
    out = tmp_path / "cmp.json"
    rc = tessera_main(["bench", "serve", "--compare", "native,vllm", "--json", str(out), "--no-progress",
                       "--num-requests", "4", "--input-len", "16", "--output-len", "4", "--warmup", "0",
                       "--ready-timeout", "60"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert len(started) == 2 and data["backends"] == ["native", "vllm"]
    for name in ("native", "vllm"):
        assert data[name]["completed"] == 4 and data[name]["failed"] == 0
        # stopped by SIGTERM (plain uvicorn re-raises it after its graceful shutdown: -15)
        assert data["servers"][name]["exit_code"] in (0, -15) and data["servers"][name]["startup_s"] is not None
    assert data["config"]["concurrency"] == 16
    assert data["ratios"]["output_tok_s_native_over_vllm"] > 0
    assert data["ratios"]["p50_ttft_ms_native"] == data["native"]["ttft_ms"]["p50"]
    assert set(data["targets"]) == {"p50_ttft_not_higher", "output_tok_s_at_least_1.3x"}
    assert (tmp_path / "cmp.png").exists() and (tmp_path / "cmp-latency.png").exists()


if __name__ == "__main__":  # `python test_serve.py --serve PORT`: the fake server as its own process
    import argparse
    import sys

    import uvicorn

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", type=int, required=True)
    port = ap.parse_args().serve
    uvicorn.run(make_fake_app({"bodies": [], "streams": 0, "delay": 0.002}), host="127.0.0.1", port=port,
                log_level="warning")
