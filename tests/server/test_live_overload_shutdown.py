"""Process-level behaviour on a real uvicorn server (items 3-5 of issue #3), on the real engine and,
for a fast check of the server logic alone, on the fake backend:

3. 50 streams dropped mid-stream: running requests return to 0 and free KV blocks to the total within 2 s.
4. Over --max-queue: 429 with Retry-After at once; nothing hangs.
5. SIGTERM during 8 streams: all 8 finish, new requests get 503, the process exits 0."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.server.live_server import LiveServer
from tests.server.test_openai_client import needs_engine

# The real engine (scheduler, KV cache, step loop) with tiny random weights: these tests are about
# requests and blocks, not text, and the tiny shape keeps them fast on two cores.
ENGINE_MODEL = "synthetic:tiny"

KINDS = [pytest.param("fake"), pytest.param("engine", marks=[needs_engine, pytest.mark.slow])]


def start(kind: str, *args: str) -> LiveServer:
    if kind == "fake":
        return LiveServer.fake(*args)
    return LiveServer.tessera("--model", ENGINE_MODEL, "--dtype", "float32", "--device", "cpu", *args)


def chat(max_tokens: int, stream: bool = True, content: str = "Tell me a long story about a dragon.") -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "stream": stream,
            "ignore_eos": True, "temperature": 0}


async def _drop_after(client: httpx.AsyncClient, url: str, events: int) -> int:
    """Opens a stream, reads `events` chunks, then drops the connection; returns chunks read."""
    seen = 0
    async with client.stream("POST", url, json=chat(max_tokens=400)) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen >= events:
                    break
    return seen


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_streams_free_everything(kind):
    with start(kind, "--max-num-seqs", "64") as server:
        async def run():
            # One connection per stream: leaving the `stream` block closes that connection for real.
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120, limits=limits) as client:
                seen = await asyncio.gather(*[_drop_after(client, "/v1/chat/completions", 3) for _ in range(50)])
            assert seen == [3] * 50
            # Whole (non-streamed) responses too: the client gives up waiting and closes the connection.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=0.5, limits=limits) as client:
                results = await asyncio.gather(*[client.post("/v1/completions", json={
                    "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True}) for _ in range(10)],
                    return_exceptions=True)
            assert all(isinstance(r, httpx.TimeoutException) for r in results), results

        before = server.metrics()
        asyncio.run(run())
        dropped_at = time.monotonic()
        while True:
            m = server.metrics()
            if (m["tessera:num_requests_running"] == 0 and m["tessera:num_requests_waiting"] == 0
                    and m["tessera:kv_cache_blocks_free"] == m["tessera:kv_cache_blocks_total"]
                    and m["tessera:num_requests_inflight"] == 0):
                break
            assert time.monotonic() - dropped_at < 2.0, f"not freed within 2 s: {m}"
            time.sleep(0.05)
        # They were aborted, not run to the end: far fewer than 50 x 400 tokens were generated.
        generated = m["tessera:generation_tokens_total"] - before["tessera:generation_tokens_total"]
        assert generated < 50 * 400 / 2
        # And the server still serves.
        r = httpx.post(server.base_url + "/v1/chat/completions", json=chat(4, stream=False), timeout=60)
        assert r.status_code == 200


async def _wait_inflight(server: LiveServer, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while server.metrics().get("tessera:num_requests_inflight") != n:
        assert time.monotonic() < deadline, f"never {n} in flight: {server.metrics()}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_over_max_queue_is_429_at_once(kind):
    # One slot runs, one request may wait: a third is over the limit.
    with start(kind, "--max-num-seqs", "1", "--max-queue", "1") as server:
        async def run():
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
                async def hold(max_tokens: int, release: asyncio.Event | None = None) -> str:
                    async with client.stream("POST", "/v1/chat/completions", json=chat(max_tokens)) as r:
                        assert r.status_code == 200
                        last = ""
                        async for line in r.aiter_lines():
                            if release is not None and release.is_set():
                                return "dropped"
                            if line.startswith("data: "):
                                last = line
                        return last

                release = asyncio.Event()
                running = asyncio.create_task(hold(1500, release))  # long: it will be dropped, not finished
                await _wait_inflight(server, 1)
                waiting = asyncio.create_task(hold(8))
                await _wait_inflight(server, 2)

                async def rejected():
                    t0 = time.monotonic()
                    r = await client.post("/v1/chat/completions", json=chat(8, stream=False))
                    return r, time.monotonic() - t0

                for r, elapsed in await asyncio.gather(*[rejected() for _ in range(6)]):
                    assert r.status_code == 429, r.text
                    assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full"
                    assert elapsed < 1.0
                official = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
                model = (await official.models.list()).data[0].id
                with pytest.raises(openai.RateLimitError) as exc:
                    await official.chat.completions.create(model=model, max_tokens=2,
                                                           messages=[{"role": "user", "content": "hi"}])
                assert exc.value.response.headers["retry-after"] == "1"
                assert not running.done() and not waiting.done()
                # Dropping the running stream frees its slot; the waiting one then runs to the end.
                release.set()
                assert await asyncio.wait_for(running, 30) == "dropped"
                assert await asyncio.wait_for(waiting, 60) == "data: [DONE]"
                await _wait_inflight(server, 0)
                ok = await official.chat.completions.create(model=model, max_tokens=2,
                                                            messages=[{"role": "user", "content": "hi"}])
                assert ok.choices

        asyncio.run(run())


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_drains_streams_then_exits_0(kind):
    with start(kind, "--shutdown-timeout", "60") as server:
        async def stream_one(client: httpx.AsyncClient, started: asyncio.Event, counter: list) -> dict:
            events = []
            # Long enough to outlast the checks below on a fast machine (~300 steps/s with the tiny model).
            async with client.stream("POST", "/v1/chat/completions", json=chat(max_tokens=300)) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if len(events) == 2:  # a token arrived (the first event is the role)
                        counter.append(1)
                        if len(counter) == 8:
                            started.set()
                    events.append(line[6:])
            return {"done": events[-1] == "[DONE]",
                    "finish": [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]
                               if json.loads(e)["choices"]][-1]}

        async def run():
            started = asyncio.Event()
            counter: list = []
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
                tasks = [asyncio.create_task(stream_one(client, started, counter)) for _ in range(8)]
                await asyncio.wait_for(started.wait(), 60)
                server.terminate()
                async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as fresh:
                    deadline = time.monotonic() + 10
                    while (ready := await fresh.get("/ready")).status_code == 200:
                        assert time.monotonic() < deadline, "SIGTERM never started a drain"
                        await asyncio.sleep(0.02)
                    late = await fresh.post("/v1/chat/completions", json=chat(4, stream=False))
                    health = await fresh.get("/health")
                return await asyncio.gather(*tasks), late, ready, health

        streams, late, ready, health = asyncio.run(run())
        assert late.status_code == 503, late.text
        assert late.json()["error"]["code"] == "server_shutting_down" and "retry-after" in late.headers
        assert ready.status_code == 503 and health.status_code == 200
        assert all(s["done"] and s["finish"] == "length" for s in streams), streams
        assert server.wait(60) == 0, server.log()


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_aborts_what_outlives_the_shutdown_timeout(kind):
    with start(kind, "--shutdown-timeout", "1") as server:
        async def stream_one(client: httpx.AsyncClient, started: list) -> list[str]:
            events = []
            async with client.stream("POST", "/v1/chat/completions", json=chat(max_tokens=1500)) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        if len(events) == 2:
                            started.append(1)
            return events

        async def run():
            started: list = []
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
                tasks = [asyncio.create_task(stream_one(client, started)) for _ in range(2)]
                while len(started) < 2:
                    await asyncio.sleep(0.02)
                server.terminate()
                t0 = time.monotonic()
                streams = await asyncio.gather(*tasks)
                return streams, time.monotonic() - t0

        streams, elapsed = asyncio.run(run())
        for events in streams:
            assert events[-1] == "[DONE]"
            finishes = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"]]
            assert finishes[-1] == "abort"
        assert elapsed < 10
        assert server.wait(30) == 0, server.log()
