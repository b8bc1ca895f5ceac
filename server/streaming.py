"""Server-sent events, as OpenAI streams them: `data: {json}\\n\\n` per chunk and a final `data: [DONE]`.

Once the 200 and the first bytes are out, an error can no longer change the status, so it travels as an
event `data: {"error": {...}}` (the `openai` client raises it as APIError), and the stream still ends
with [DONE]. `SSEResponse` runs its `on_close` however the response ends, including when it is cancelled
before the body was ever iterated (client gone while queued), so admission slots can never leak."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from server.errors import APIError, error_body

logger = logging.getLogger("tessera.server")

DONE = b"data: [DONE]\n\n"


def sse_event(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


async def sse_body(events: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """JSON strings -> SSE frames, errors -> an error event, always ending with [DONE]."""
    try:
        async for data in events:
            yield sse_event(data)
    except APIError as exc:
        yield sse_event(json.dumps(exc.body()))
    except Exception:
        logger.exception("error while streaming")
        yield sse_event(json.dumps(error_body("internal server error", "server_error", code="internal_error")))
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()
    yield DONE


class SSEResponse(StreamingResponse):
    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None] = lambda: None) -> None:
        # no-cache and no proxy buffering: tokens must reach the client as they are produced
        super().__init__(sse_body(events), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Watch for the disconnect ourselves instead of leaving it to Starlette, which (under ASGI spec
        # 2.4 servers) only notices on the next write: a request still queued in the engine writes
        # nothing for a long time, and would hold its place all that while.
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass  # the client is gone; the finally below cleans up
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.body_iterator.aclose()
                    aclose = getattr(self._events, "aclose", None)
                    if aclose is not None:
                        await aclose()
                finally:
                    self._on_close()
