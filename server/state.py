"""What every route needs, built once by the app factory and reached through `request.app.state`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from engine.backends.base import EngineBackend
from server.admission import AdmissionController
from server.errors import APIError
from server.metrics import ServerMetrics
from server.settings import ServerSettings


@dataclass
class ServerState:
    backend: EngineBackend
    settings: ServerSettings
    metrics: ServerMetrics
    admission: AdmissionController
    created: int = field(default_factory=lambda: int(time.time()))
    started: bool = False  # the backend finished start(): the model is loaded

    @property
    def model_name(self) -> str:
        return self.settings.served_model_name or self.backend.model_name

    def check_model(self, requested: str | None) -> str:
        """The name to report for a request's `model`; an unknown name is a 404 like OpenAI's."""
        if requested is None or requested == self.model_name:
            return self.model_name
        raise APIError(404, f"The model `{requested}` does not exist. This server serves `{self.model_name}`.",
                       param="model", code="model_not_found")


def get_state(request: Request) -> ServerState:
    return request.app.state.tessera
