"""Every error leaves the server in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, so
the official clients raise their own exception types (BadRequestError, NotFoundError, ...).

FastAPI's defaults are replaced: validation is a 400 (never 422 or `{"detail": ...}`), unknown routes are
404s in the same shape, and an unexpected exception is a 500 whose body holds no stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("tessera.server")

# status -> (OpenAI error type, default code)
_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout_error", "request_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    503: ("service_unavailable_error", "service_unavailable"),
    504: ("timeout_error", "request_timeout"),
}


class APIError(Exception):
    """An error with an HTTP status, raised anywhere in request handling."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        default_type, default_code = _TYPES.get(status, ("server_error" if status >= 500 else
                                                         "invalid_request_error", None))
        self.status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else default_code
        self.type = type or default_type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic's error list -> one readable line plus the first offending parameter. The input values
    are left out on purpose: they can be huge, and echoing them back helps nobody."""
    parts = []
    first_param = None
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        # a JSON syntax error's loc is a character position, not a parameter
        param = None if err.get("type") == "json_invalid" else (".".join(loc) or None)
        if first_param is None:
            first_param = param
        if err.get("type") == "json_invalid":
            parts.append(f"invalid JSON body: {err.get('ctx', {}).get('error', err.get('msg', ''))}")
        else:
            parts.append(f"{param}: {err.get('msg', 'invalid value')}" if param else err.get("msg", ""))
    more = f" (and {len(errors) - 5} more errors)" if len(errors) > 5 else ""
    return "; ".join(parts) + more, first_param


async def _api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc)


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(list(exc.errors()))
    return error_response(APIError(400, message or "invalid request", param=param))


async def _http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if status == 404:
        message = f"no route {request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    return error_response(APIError(status, message, headers=headers))


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    # The trace goes to the log, never to the client.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, "internal server error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
