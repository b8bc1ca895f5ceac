"""Runs one request in the engine on behalf of an HTTP request.

Whatever ends the HTTP side (the response is complete, the client went away, the handler was cancelled,
the per-request timeout fired), the engine request ends too and its KV blocks are freed: the abort runs in a
shielded scope because a cancelled task would otherwise skip it. Latency metrics are observed here, once,
for streamed and whole responses alike."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from fastapi import Request

from engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from engine.sampling_params import SamplingParams
from server.errors import APIError
from server.state import ServerState

logger = logging.getLogger("tessera.server")
T = TypeVar("T")

# Fire-and-forget tasks must be referenced until done, or the loop may garbage-collect them mid-flight.
_background: set[asyncio.Task] = set()


def _spawn(coro: Awaitable) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


@dataclass(slots=True)
class GenerationJob:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    plugin_options: dict | None = None
    arrival: float = field(default_factory=time.monotonic)


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


async def iterate_outputs(state: ServerState, job: GenerationJob) -> AsyncIterator[RequestOutput]:
    """The engine's outputs for one job, ending with the finished one."""
    backend, metrics = state.backend, state.metrics
    timeout = state.settings.request_timeout
    timed_out = False
    timer = None
    if timeout is not None:
        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            _spawn(backend.abort(job.request_id))
        timer = asyncio.get_running_loop().call_later(timeout, on_timeout)

    stream = None
    finished = False
    first_token_at = last_token_at = None
    queue_observed = False
    outcome: str | None = None  # finish reason, "error" or "rejected"; None: cut short (aborted)
    try:
        # Inside the try: a backend may reject the request when called, not only when iterated.
        stream = backend.generate(job.prompt_token_ids, job.params, job.request_id, job.plugin_options)
        async for out in stream:
            now = time.monotonic()
            if not queue_observed and out.first_scheduled_time is not None and out.arrival_time:
                metrics.queue_time.observe(max(0.0, out.first_scheduled_time - out.arrival_time))
                queue_observed = True
            if any(o.delta_token_ids for o in out.outputs):
                if first_token_at is None:
                    first_token_at = now
                    metrics.ttft.observe(now - job.arrival)
                else:
                    metrics.itl.observe(now - last_token_at)
                last_token_at = now
            if out.error:
                outcome = "error"
                raise APIError(500, f"generation failed: {out.error}", code="generation_error")
            if out.finished:
                finished = True
                outcome = (out.outputs[0].finish_reason if out.outputs else None) or "stop"
                if timed_out and outcome == "abort":
                    raise APIError(504, f"the request did not finish within {timeout:g} s", code="timeout")
            yield out
            if finished:
                break
    except ValueError as exc:
        # The engine's way of saying "this request can never run" (too long, bad plugin options).
        outcome = "rejected"
        raise APIError(400, str(exc)) from exc
    finally:
        if timer is not None:
            timer.cancel()
        with anyio.CancelScope(shield=True):
            try:
                if stream is not None and hasattr(stream, "aclose"):
                    await stream.aclose()
                if not finished:
                    await backend.abort(job.request_id)
            except Exception:
                logger.exception("abort of %s failed", job.request_id)
        metrics.finished(outcome or "abort")
        metrics.e2e.observe(time.monotonic() - job.arrival)


@dataclass(slots=True)
class SampleResult:
    """One sample of a finished request, assembled from the stream."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass(slots=True)
class JobResult:
    prompt_token_ids: list[int]
    samples: list[SampleResult]
    num_cached_tokens: int = 0


def _update(sample: SampleResult, o: CompletionOutput) -> None:
    sample.text = o.text
    sample.token_ids = list(o.token_ids)
    if o.delta_logprobs:
        sample.logprobs.extend(o.delta_logprobs)
    elif o.logprobs is not None and len(o.logprobs) > len(sample.logprobs):
        sample.logprobs = list(o.logprobs)
    if o.finish_reason is not None:
        sample.finish_reason, sample.stop_reason = o.finish_reason, o.stop_reason


async def collect(state: ServerState, job: GenerationJob) -> JobResult:
    """Runs a job to the end and returns every sample's full text, ids and logprobs."""
    samples: dict[int, SampleResult] = {}
    cached = 0
    async with aclosing(iterate_outputs(state, job)) as outputs:
        async for out in outputs:
            cached = max(cached, out.num_cached_tokens)
            for o in out.outputs:
                _update(samples.setdefault(o.index, SampleResult(o.index)), o)
    return JobResult(job.prompt_token_ids, [samples[i] for i in sorted(samples)], cached)


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read already, so the next message is the disconnect (or never comes).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Awaits `work`, cancelling it (which aborts its engine requests) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientDisconnected()
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(task, watcher, return_exceptions=True)


_END = object()


async def merge_streams(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Interleaves several async iterators as items arrive, tagging each with its iterator's index.
    Closing the merged iterator cancels (and so aborts) all of them."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, it: AsyncIterator[T]) -> None:
        try:
            async with aclosing(it) as items:
                async for item in items:
                    await queue.put((i, item, None))
        except Exception as exc:
            await queue.put((i, None, exc))
        finally:
            queue.put_nowait((i, _END, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is _END:
                remaining -= 1
                continue
            yield i, item
    finally:
        for t in tasks:
            t.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)


async def collect_many(state: ServerState, jobs: list[GenerationJob]) -> list[JobResult]:
    """Runs jobs concurrently; if one fails, the others are cancelled (and so aborted)."""
    if len(jobs) == 1:
        return [await collect(state, jobs[0])]
    tasks = [asyncio.ensure_future(collect(state, job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
