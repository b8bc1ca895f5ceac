"""Probes: /health is liveness (the process answers), /ready is readiness (send traffic here).

Ready means the model is loaded, the server is not draining, and the engine is making progress: either
nothing is pending, or a step succeeded within `ready_step_window` seconds. A wedged step loop thus
takes the replica out of rotation while its liveness probe still passes."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from server.errors import APIError
from server.protocol import ErrorResponse, HealthStatus
from server.state import ServerState, get_state

router = APIRouter()


def readiness(state: ServerState) -> tuple[bool, str | None]:
    if not state.started:
        return False, "the model is loading"
    if state.admission.draining:
        return False, "the server is shutting down"
    stats = state.backend.stats()
    if stats.num_running + stats.num_waiting == 0:
        return True, None
    last = stats.last_step_time
    window = state.settings.ready_step_window
    if last is not None and time.monotonic() - last <= window:
        return True, None
    return False, f"requests are pending and no engine step succeeded in the last {window:g} s"


@router.get("/health", response_model=HealthStatus, response_model_exclude_none=True,
            responses={503: {"model": ErrorResponse}})
async def health(request: Request) -> HealthStatus:
    # A backend whose step loop died cannot recover: fail liveness so the orchestrator restarts us.
    if getattr(get_state(request).backend, "is_dead", False):
        raise APIError(503, "the engine has stopped", code="engine_dead")
    return HealthStatus(status="ok")


@router.get("/ready", response_model=HealthStatus, response_model_exclude_none=True, responses={503: {"model": ErrorResponse}})
async def ready(request: Request) -> HealthStatus:
    ok, detail = readiness(get_state(request))
    if not ok:
        # Like every error, in OpenAI's shape; probes only look at the status.
        raise APIError(503, detail or "not ready", code="not_ready")
    return HealthStatus(status="ready")
