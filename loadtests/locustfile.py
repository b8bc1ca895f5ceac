"""Locust load test of an OpenAI-compatible server: users that stream chat completions.

Besides the request itself (named `/v1/chat/completions [stream]`, timed to `data: [DONE]`), every
successful streamed request records two more kinds of locust entries:
  TTFT  time from sending to the first chunk carrying output text (one entry per request),
  ITL   each gap between two consecutive output chunks (one entry per gap).
A request is a failure on an HTTP error status, a transport error, a stream that ends without
`data: [DONE]`, an error object inside the stream, or a stream without any output text.

Configuration (environment variables; `make loadtest` sets them):
  LOADTEST_HOST        server root when locust gets no --host (default http://127.0.0.1:8000)
  LOADTEST_MODEL       model name (default: the first one in GET /v1/models)
  LOADTEST_MAX_TOKENS  max_tokens per request (default 64)
  LOADTEST_MIN_TOKENS  min_tokens extension field (default 1, so an immediate EOS is no empty reply;
                       0 leaves it out)
  LOADTEST_IGNORE_EOS  1 to send ignore_eos (every request yields max_tokens tokens); default 0
  LOADTEST_TEMPERATURE sampling temperature (default 0.7)
  LOADTEST_API_KEY     bearer token (falls back to TESSERA_API_KEY)
  LOADTEST_TIMEOUT     per-request timeout in seconds (default 300)

Run: locust -f loadtests/locustfile.py --headless -u 32 -r 4 -t 2m -H http://127.0.0.1:8000
(or `make loadtest`, which also starts the server and checks its memory)."""

from __future__ import annotations

import json
import os
import random
import time

from locust import HttpUser, between, events, task

STREAM_NAME = "/v1/chat/completions [stream]"
PLAIN_NAME = "/v1/chat/completions"

TOPICS = ("the sea", "a lighthouse keeper", "autumn in a small town", "a robot learning to paint",
          "the history of bread", "a train journey at night", "bees", "a lost umbrella", "mountains",
          "a chess game between friends", "the first day of school", "a city after rain")
FORMS = ("Write a short story about {}.", "Describe {} in a few sentences.", "Write a poem about {}.",
         "Explain to a child what is special about {}.", "List five facts about {}.")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


class StreamStats:
    """What one SSE stream yielded: fed line by line with the time each arrived."""

    def __init__(self, start: float):
        self.start = start
        self.last: float | None = None
        self.ttft: float | None = None  # seconds
        self.itl: list[float] = []  # seconds
        self.text_chars = 0
        self.done = False
        self.error: str | None = None
        self.completion_tokens: int | None = None
        self.bytes = 0

    def feed(self, line: str | bytes, now: float) -> None:
        if isinstance(line, bytes):
            self.bytes += len(line)
            line = line.decode("utf-8", "replace")
        line = line.strip()
        if not line.startswith("data:") or self.done:
            return
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            self.error = f"unparsable stream chunk: {data[:80]!r}"
            return
        if chunk.get("error"):
            err = chunk["error"]
            self.error = f"error in stream: {err.get('message') if isinstance(err, dict) else err}"
            return
        usage = chunk.get("usage")
        if usage:
            self.completion_tokens = usage.get("completion_tokens")
        text = ""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text += (delta.get("content") or "") + (delta.get("reasoning_content") or "")
            if delta.get("tool_calls"):
                text += "<tool_call>"
        if not text:
            return
        self.text_chars += len(text)
        if self.ttft is None:
            self.ttft = now - self.start
        else:
            self.itl.append(now - self.last)
        self.last = now

    def failure(self) -> str | None:
        """Why the stream counts as failed, or None."""
        if self.error:
            return self.error
        if not self.done:
            return "stream ended without data: [DONE]"
        if self.text_chars == 0:
            return "empty output"
        return None


def _first_model(host: str, headers: dict) -> str:
    import requests

    resp = requests.get(host.rstrip("/") + "/v1/models", headers=headers, timeout=30)
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


def _error_message(resp) -> str:
    if getattr(resp, "error", None) is not None and not resp.status_code:
        return f"{type(resp.error).__name__}: {resp.error}"[:200]
    try:
        return resp.json()["error"]["message"][:200]
    except Exception:  # noqa: BLE001 - not OpenAI's shape: show the raw text
        return (resp.text or "")[:200]


class ChatUser(HttpUser):
    """A chat client that mostly streams, as interactive clients do."""

    host = os.environ.get("LOADTEST_HOST", "http://127.0.0.1:8000")
    wait_time = between(0.2, 1.0)
    _model: str | None = None  # resolved once per process, shared by all users

    def on_start(self) -> None:
        key = os.environ.get("LOADTEST_API_KEY") or os.environ.get("TESSERA_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.max_tokens = _env_int("LOADTEST_MAX_TOKENS", 64)
        self.min_tokens = _env_int("LOADTEST_MIN_TOKENS", 1)
        self.ignore_eos = os.environ.get("LOADTEST_IGNORE_EOS", "0").lower() in ("1", "true", "yes")
        self.temperature = _env_float("LOADTEST_TEMPERATURE", 0.7)
        self.timeout = _env_float("LOADTEST_TIMEOUT", 300.0)
        model = os.environ.get("LOADTEST_MODEL") or ChatUser._model
        if not model:
            model = ChatUser._model = _first_model(self.host, self.headers)
        self.model = model

    def _body(self, stream: bool) -> dict:
        prompt = random.choice(FORMS).format(random.choice(TOPICS))
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens, "temperature": self.temperature, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.min_tokens > 0:
            body["min_tokens"] = min(self.min_tokens, self.max_tokens)
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body

    def _fire(self, request_type: str, name: str, ms: float) -> None:
        self.environment.events.request.fire(request_type=request_type, name=name, response_time=ms,
                                             response_length=0, exception=None, context={})

    @task(4)
    def chat_stream(self) -> None:
        start = time.perf_counter()
        with self.client.post("/v1/chat/completions", json=self._body(True), headers=self.headers,
                              stream=True, catch_response=True, name=STREAM_NAME,
                              timeout=self.timeout) as resp:
            stats = StreamStats(start)
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {_error_message(resp)}" if resp.status_code
                             else f"connection failed: {_error_message(resp)}")
                return
            try:
                for line in resp.iter_lines():
                    stats.feed(line, time.perf_counter())
            except Exception as exc:  # noqa: BLE001 - a broken stream is a failed request
                stats.error = f"stream broke: {type(exc).__name__}: {exc}"
            # The entry of the request itself covers the whole stream, not just its headers.
            resp.request_meta["response_time"] = (time.perf_counter() - start) * 1000.0
            resp.request_meta["response_length"] = stats.bytes
            why = stats.failure()
            if why:
                resp.failure(why)
                return
            resp.success()
        self._fire("TTFT", "chat stream", stats.ttft * 1000.0)
        for gap in stats.itl:
            self._fire("ITL", "chat stream", gap * 1000.0)

    @task(1)
    def chat(self) -> None:
        with self.client.post("/v1/chat/completions", json=self._body(False), headers=self.headers,
                              catch_response=True, name=PLAIN_NAME, timeout=self.timeout) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {_error_message(resp)}")
                return
            try:
                body = resp.json()
                message = body["choices"][0]["message"]
                usage = body["usage"]
            except (ValueError, KeyError, IndexError, TypeError):
                resp.failure(f"not a chat completion: {resp.text[:200]!r}")
                return
            if not (message.get("content") or message.get("reasoning_content") or message.get("tool_calls")):
                resp.failure("empty output")
            elif not usage.get("completion_tokens"):
                resp.failure("usage.completion_tokens missing or 0")
            else:
                resp.success()


@events.quitting.add_listener
def _fail_on_any_failure(environment, **_kw) -> None:
    """Exit nonzero when any request failed (locust's own default only looks at its fail ratio)."""
    if environment.stats.total.num_failures > 0:
        environment.process_exit_code = 1
