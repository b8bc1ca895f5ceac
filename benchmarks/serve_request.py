"""The client side of `tessera bench serve`: one streamed, timed request to an OpenAI-compatible server
(`send_request` -> `RequestResult`), the request body, and the synthetic prompts calibrated against the
server's own token count (see benchmarks/serve.py for what is measured and why)."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field

# Common English words that are one token each (with their leading space) in the GPT-2/Llama/SmolLM
# style byte-level BPE vocabularies; calibration absorbs the cases where that does not hold.
WORDS = (
    "the of and to in is was for on as with by at from his her that this which have had are not "
    "but be or an they one you all were we there their been has when who more will would if out so "
    "said what up its about into than them can only other new some time could these two may then do "
    "first any my now such like our over man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people how too "
    "little state good very make world still own see men work long get here between both life being "
    "under never day same another know while last might us great old year off come since against go "
    "came right used take three house water city room light road tree river stone music paper table "
    "window garden market school family friend country morning evening summer winter forest"
).split()


# ----------------------------------------------------------------------------------------------------
# One request


@dataclass
class RequestResult:
    ok: bool = False
    error: str | None = None
    status: int | None = None
    start: float = 0.0  # perf_counter at send
    ttft: float | None = None  # seconds
    e2e: float | None = None  # seconds
    itl: list[float] = field(default_factory=list)  # seconds
    output_tokens: int = 0
    prompt_tokens: int | None = None
    chunks: int = 0
    done: bool = False
    text_len: int = 0

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def normalize_base_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def build_body(endpoint: str, model: str, prompt: str, max_tokens: int, ignore_eos: bool,
               temperature: float = 0.0, stream: bool = True) -> dict:
    body: dict = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        # Extra sampling fields understood by vLLM and tessera: generate exactly max_tokens tokens.
        body["ignore_eos"] = True
        body["min_tokens"] = max_tokens
    return body


def _chunk_text(choice: dict) -> str:
    if "delta" in choice:
        delta = choice.get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "") + (
            delta.get("reasoning") or "") + ("x" if delta.get("tool_calls") else "")
    return choice.get("text") or ""


def _error_text(status: int, body: bytes) -> str:
    try:
        msg = json.loads(body)["error"]["message"]
    except Exception:  # noqa: BLE001 - anything unparsable is shown raw
        msg = body[:200].decode("utf-8", "replace")
    return f"HTTP {status}: {msg}"


async def send_request(client, url: str, body: dict, headers: dict, timeout: float) -> RequestResult:
    """Stream one request and time it. Never raises: failures come back as ok=False."""
    import httpx

    res = RequestResult()
    res.start = time.perf_counter()
    last = res.start
    try:
        async with client.stream("POST", url, json=body, headers=headers, timeout=timeout) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                res.error = _error_text(resp.status_code, await resp.aread())
                return res
            async for line in resp.aiter_lines():
                line = line.strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    res.done = True
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk and not chunk.get("choices"):
                    err = chunk["error"]
                    res.error = f"stream error: {err.get('message') if isinstance(err, dict) else err}"
                    return res
                usage = chunk.get("usage")
                if usage:
                    res.output_tokens = int(usage.get("completion_tokens") or 0)
                    res.prompt_tokens = usage.get("prompt_tokens")
                text = "".join(_chunk_text(c) for c in chunk.get("choices") or [])
                if not text:
                    continue
                res.chunks += 1
                res.text_len += len(text)
                if res.ttft is None:
                    res.ttft = now - res.start
                else:
                    res.itl.append(now - last)
                last = now
        res.e2e = time.perf_counter() - res.start
    except (httpx.HTTPError, OSError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return res
    if not res.done:
        res.error = "stream ended without data: [DONE]"
    elif res.chunks == 0:
        res.error = "empty output"
    else:
        if res.output_tokens <= 0:  # server sent no usage: one token per chunk is the best estimate
            res.output_tokens = res.chunks
        res.ok = True
    return res


async def resolve_model(client, base: str, headers: dict) -> str:
    resp = await client.get(base + "/v1/models", headers=headers, timeout=30.0)
    if resp.status_code != 200:
        raise RuntimeError(f"GET /v1/models failed: {_error_text(resp.status_code, resp.content)}")
    data = resp.json().get("data") or []
    if not data:
        raise RuntimeError("GET /v1/models lists no model; pass --model")
    return data[0]["id"]


# ----------------------------------------------------------------------------------------------------
# Prompts


def random_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(n, 1)))


async def _prompt_tokens(client, base: str, endpoint: str, model: str, prompt: str, headers: dict,
                         timeout: float) -> int | None:
    """usage.prompt_tokens of a 1-token non-streamed request, or None if the server did not say."""
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    body = build_body(endpoint, model, prompt, 1, ignore_eos=False, stream=False)
    resp = await client.post(base + path, json=body, headers=headers, timeout=timeout)
    if resp.status_code != 200:
        raise RuntimeError(f"calibration request failed: {_error_text(resp.status_code, resp.content)}")
    usage = resp.json().get("usage") or {}
    n = usage.get("prompt_tokens")
    return int(n) if n is not None else None


async def calibrate_words(client, base: str, endpoint: str, model: str, input_len: int, headers: dict,
                          timeout: float, seed: int) -> tuple[int, dict]:
    """How many words make a prompt of input_len tokens as the server counts them.

    Two probes give tokens-per-word and the fixed overhead (template, BOS); a few more correct the
    estimate until a probe lands on input_len (or stops improving)."""
    rng = random.Random(seed ^ 0x5EED)
    info: dict = {"method": "usage.prompt_tokens", "probes": []}

    async def probe(n_words: int) -> int | None:
        n = await _prompt_tokens(client, base, endpoint, model, random_words(rng, n_words), headers, timeout)
        info["probes"].append([n_words, n])
        return n

    a_words, b_words = 8, max(16, min(input_len, 64))
    a, b = await probe(a_words), await probe(b_words)
    if a is None or b is None or b <= a:
        info["method"] = "heuristic (server reports no usage.prompt_tokens): one token per word"
        return max(input_len, 1), info
    per_word = (b - a) / (b_words - a_words)
    overhead = a - per_word * a_words
    info["tokens_per_word"] = round(per_word, 4)
    info["overhead_tokens"] = round(overhead, 2)
    words = max(1, round((input_len - overhead) / per_word))
    best = (math.inf, words)
    for _ in range(4):
        n = await probe(words)
        if n is None:
            break
        err = n - input_len
        if abs(err) < best[0]:
            best = (abs(err), words)
        if err == 0:
            break
        step = round(err / per_word) or (1 if err > 0 else -1)
        words = max(1, words - step)
    info["words"] = best[1]
    return best[1], info


def make_prompts(n: int, words: int, seed: int) -> list[str]:
    """n different prompts (so no prefix cache makes the measurement cheaper than real traffic)."""
    rng = random.Random(seed)
    return [random_words(rng, words) for _ in range(n)]
