"""API key check (`--api-key` / TESSERA_API_KEY) for every route but the probes.

A plain ASGI middleware rather than a FastAPI dependency: it also covers unknown routes and the OpenAPI
pages, and unlike BaseHTTPMiddleware it does not get between a streaming response and its client."""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError

OPEN_PATHS = frozenset({"/health", "/ready"})


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                # Constant-time comparison: response timing must not reveal how much of a guess matched.
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS" \
                or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        exc = APIError(401, "Incorrect API key provided. Pass it as `Authorization: Bearer <key>`.",
                       headers={"WWW-Authenticate": "Bearer"})
        await JSONResponse(exc.body(), status_code=401, headers=exc.headers)(scope, receive, send)
