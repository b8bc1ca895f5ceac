"""Admission control: who may start a request now.

Overload is answered at once (429 + Retry-After) instead of letting requests pile up until clients time
out, and a draining server answers 503 while the requests it already accepted finish."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from engine.stats import EngineStats
from server.errors import APIError
from server.settings import ServerSettings

logger = logging.getLogger("tessera.server")


class Ticket:
    """A slot held by one admitted request; released exactly once, however the request ends."""

    __slots__ = ("request_id", "engine_request_ids", "_controller", "_released")

    def __init__(self, request_id: str, controller: AdmissionController) -> None:
        self.request_id = request_id
        # What to abort in the engine at the end of a drain: a request with several prompts runs as
        # several engine requests.
        self.engine_request_ids: list[str] = [request_id]
        self._controller = controller
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._controller._release(self)


class AdmissionController:
    def __init__(self, settings: ServerSettings, stats: Callable[[], EngineStats]) -> None:
        self._settings = settings
        self._stats = stats
        self._inflight: dict[str, Ticket] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @property
    def num_inflight(self) -> int:
        return len(self._inflight)

    def _retry_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self._settings.retry_after)}

    def waiting_after_admit(self) -> int:
        """How many requests would wait for a slot if one more were admitted. The server's own count
        covers a burst the engine has not seen yet (stats lag behind arrivals); the engine's count covers
        requests it holds back for lack of KV blocks while fewer than max_num_seqs run."""
        beyond_capacity = len(self._inflight) + 1 - self._settings.max_num_seqs
        engine_waiting = self._stats().num_waiting
        return max(beyond_capacity, engine_waiting + 1 if engine_waiting else 0, 0)

    def admit(self, request_id: str) -> Ticket:
        if self.draining:
            raise APIError(503, "the server is shutting down; retry on another replica",
                           code="server_shutting_down", headers=self._retry_headers())
        max_queue = self._settings.max_queue
        if max_queue is not None and self.waiting_after_admit() > max_queue:
            raise APIError(429, f"the server is overloaded: {max_queue} requests are already waiting; "
                           "retry later", code="queue_full", headers=self._retry_headers())
        ticket = Ticket(request_id, self)
        self._inflight[request_id] = ticket
        self._idle.clear()
        return ticket

    def _release(self, ticket: Ticket) -> None:
        if self._inflight.get(ticket.request_id) is ticket:
            del self._inflight[ticket.request_id]
        if not self._inflight:
            self._idle.set()

    async def drain(self, timeout: float, abort: Callable[[str], Awaitable[None]],
                    abort_grace: float = 5.0) -> bool:
        """Stops admitting, waits up to `timeout` for in-flight requests, then aborts the rest and
        gives them `abort_grace` seconds to end their responses. True if everything finished."""
        self.draining = True
        start = time.monotonic()
        if self._inflight:
            logger.info("draining %d in-flight request(s), up to %.1f s", len(self._inflight), timeout)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            pass
        ids = [rid for ticket in list(self._inflight.values()) for rid in ticket.engine_request_ids]
        logger.warning("shutdown timeout after %.1f s: aborting %d request(s)", time.monotonic() - start,
                       len(self._inflight))
        for request_id in ids:
            try:
                await abort(request_id)
            except Exception:  # an abort that fails must not stop the others
                logger.exception("abort of %s failed", request_id)
        try:
            await asyncio.wait_for(self._idle.wait(), abort_grace)
        except asyncio.TimeoutError:
            logger.error("%d request(s) still open after abort", len(self._inflight))
        return False
