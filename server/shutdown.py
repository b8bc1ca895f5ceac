"""Graceful shutdown for `tessera serve`.

uvicorn's own SIGTERM handling closes the listening socket at once (new clients get "connection refused",
not a 503) and re-raises the signal after shutdown (exit status -15, which orchestrators log as a crash).
Here the first SIGTERM/SIGINT instead starts a drain: admission answers 503, in-flight requests finish
for up to `shutdown_timeout` seconds, the rest are aborted, and only then does uvicorn stop; the process
exits 0. A second signal stops at once."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from server.state import ServerState

logger = logging.getLogger("tessera.server")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self._loop is None:
            logger.warning("second %s: stopping now", signal.Signals(sig).name)
            self.should_exit = True
            self.force_exit = True
            return
        logger.info("%s: draining before shutdown", signal.Signals(sig).name)
        # A signal handler runs between two bytecodes of whatever the loop was doing: schedule, don't run.
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        state = self._state
        try:
            finished = await state.admission.drain(state.settings.shutdown_timeout, state.backend.abort)
            logger.info("drain complete" if finished else "drain timed out; remaining requests aborted")
        finally:
            self.should_exit = True
