"""The lifecycle every generation route shares: admit the request, prepare it, then either stream it or
await its whole result. The admission ticket is released exactly once on every path (prepared or not,
streamed or not, finished, failed or disconnected)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from server.admission import Ticket
from server.errors import APIError
from server.generation import ClientDisconnected, until_disconnect
from server.protocol import ErrorResponse
from server.state import ServerState
from server.streaming import SSEResponse

# Status 499 (nginx's "client closed request") is only ever logged: nobody is left to read it.
CLIENT_CLOSED = 499

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in ((400, "Invalid request"), (401, "Missing or wrong API key"),
                                (404, "Unknown model"), (413, "Body too large"),
                                (429, "Too many requests waiting"), (500, "Unexpected failure"),
                                (503, "Shutting down"), (504, "Request timeout (--request-timeout)"))
}


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def admit(state: ServerState, prefix: str) -> Ticket:
    try:
        return state.admission.admit(new_request_id(prefix))
    except APIError as exc:
        state.metrics.rejected("queue_full" if exc.status == 429 else "shutting_down")
        raise


async def respond(request: Request, ticket: Ticket, stream: bool,
                  events: Callable[[], AsyncIterator[str]],
                  result: Callable[[], Awaitable[dict]]) -> Response:
    """`events` builds the SSE stream, `result` the whole JSON body; the ticket is theirs now."""
    if stream:
        try:
            return SSEResponse(events(), on_close=ticket.release)
        except BaseException:
            ticket.release()
            raise
    try:
        body = await until_disconnect(request, result())
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)
    finally:
        ticket.release()
    return JSONResponse(body)
