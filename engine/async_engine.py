"""Async front of the engine for the server. The synchronous LLMEngine steps in one dedicated thread
(torch releases the GIL inside kernels, so the event loop stays responsive); requests and aborts
reach it through a command queue, outputs come back through one asyncio.Queue per request."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator

from engine.config import EngineConfig
from engine.outputs import CompletionOutput, RequestOutput
from engine.sampling_params import SamplingParams
from engine.stats import EngineStats

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    """Implements engine.backends.base.EngineBackend over the native engine."""

    def __init__(self, config: EngineConfig, progress: bool = True) -> None:
        self.config = config
        self._progress = progress
        self._engine = None
        self.model_name = ""
        self.max_model_len = 0
        self._commands: deque = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue] = {}
        self._stats = EngineStats()
        self._dead: str | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        from engine.llm_engine import LLMEngine

        self._loop = asyncio.get_running_loop()
        self._engine = await asyncio.to_thread(LLMEngine, self.config, self._progress)
        await asyncio.to_thread(self._engine.warmup)
        self.model_name = self._engine.model_name
        self.max_model_len = self._engine.max_model_len
        self._stats = self._engine.stats()
        self._thread = threading.Thread(target=self._run, name="tessera-engine", daemon=True)
        self._thread.start()

    @property
    def engine(self):
        return self._engine

    @property
    def tokenizer(self):
        return self._engine.tokenizer

    def stats(self) -> EngineStats:
        return self._stats

    @property
    def is_dead(self) -> bool:
        return self._dead is not None

    async def shutdown(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        await asyncio.to_thread(self._thread.join, 30)
        self._thread = None
        for rid, q in list(self._queues.items()):
            q.put_nowait(_aborted(rid))
        if self._engine is not None:
            self._engine.close()

    # ---- requests -----------------------------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], params: SamplingParams, plugin_options: dict | None = None):
        """Raises ValueError for a request that can never run (read-only, safe from any thread)."""
        return self._engine.validate_request(prompt_token_ids, params, plugin_options)

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str,
                       plugin_options: dict | None = None) -> AsyncIterator[RequestOutput]:
        if self._engine is None or self._thread is None:
            raise RuntimeError("engine is not running")
        if self._dead:
            raise EngineDeadError(self._dead)
        self.validate(prompt_token_ids, params, plugin_options)
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already in use")
        q: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = q
        self._commands.append(("add", request_id, prompt_token_ids, params, plugin_options))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self._commands.append(("abort", request_id))
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._commands.append(("abort", request_id))
        self._wake.set()

    # ---- the engine thread --------------------------------------------------------------------
    def _emit(self, request_id: str, item) -> None:
        q = self._queues.get(request_id)
        if q is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(q.put_nowait, item)

    def _deliver(self, outputs: list) -> None:
        """Event-loop side of a step's outputs."""
        for out in outputs:
            q = self._queues.get(out.request_id)
            if q is not None:
                q.put_nowait(out)

    def _drain_commands(self) -> None:
        engine = self._engine
        while self._commands:
            cmd = self._commands.popleft()
            if cmd[0] == "add":
                _, rid, prompt, params, opts = cmd
                if rid not in self._queues:
                    continue  # the caller went away before the engine saw the request
                try:
                    engine.add_request(rid, prompt, params, opts)
                except Exception as exc:  # includes ValueError for a bad request
                    self._emit(rid, exc if isinstance(exc, ValueError) else RuntimeError(str(exc)))
            elif cmd[0] == "abort":
                out = engine.abort_request(cmd[1])
                if out is not None:
                    self._emit(cmd[1], out)

    def _run(self) -> None:
        engine = self._engine
        while not self._stop.is_set():
            self._drain_commands()
            if not engine.has_unfinished_requests():
                self._stats = engine.stats()
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = engine.step()
            except Exception as exc:  # a failed step fails its requests, not the server
                log.exception("engine step failed")
                self._fail_all(f"engine step failed: {exc}")
                continue
            self._stats = engine.stats()
            if outputs and self._loop is not None:
                # one wake-up of the event loop per step, not one per request: every cross-thread
                # wake-up preempts a compute thread on a small CPU
                self._loop.call_soon_threadsafe(self._deliver, outputs)
        # shutting down: abort everything still in the engine
        for rid in engine.unfinished_request_ids():
            out = engine.abort_request(rid)
            if out is not None:
                self._emit(rid, out)
        self._stats = engine.stats()

    def _fail_all(self, message: str) -> None:
        engine = self._engine
        for rid in engine.unfinished_request_ids():
            out = engine.abort_request(rid)
            if out is not None:
                out.error = message
                for c in out.outputs:
                    c.finish_reason = "error"
                self._emit(rid, out)


def _aborted(request_id: str) -> RequestOutput:
    return RequestOutput(request_id, [], [CompletionOutput(0, finish_reason="abort")], finished=True)
