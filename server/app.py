"""The FastAPI app factory. Everything the app needs comes in as arguments (no module globals), so tests
and multi-model hosts can build as many apps as they like."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from engine.backends.base import EngineBackend
from server.admission import AdmissionController
from server.auth import APIKeyMiddleware
from server.body_limit import BodyLimitMiddleware
from server.errors import install_error_handlers
from server.metrics import ServerMetrics
from server.routes import chat, completions, health, metrics, models
from server.settings import ServerSettings
from server.state import ServerState

logger = logging.getLogger("tessera.server")


def create_app(backend: EngineBackend, settings: ServerSettings | None = None) -> FastAPI:
    """The app starts the backend (loads the model) on startup and shuts it down on exit."""
    settings = settings or ServerSettings()
    admission = AdmissionController(settings, backend.stats)
    state = ServerState(backend=backend, settings=settings, admission=admission,
                        metrics=ServerMetrics(backend.stats, inflight=lambda: admission.num_inflight))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.start()
        state.metrics.bind(state.model_name)  # a backend may know its model's name only once loaded
        for plugin in getattr(getattr(backend, "engine", None), "plugins", None) or ():
            state.metrics.add_collectors(plugin.metric_collectors())
        state.started = True
        logger.info("serving %s (context window %d tokens)", state.model_name, backend.max_model_len)
        try:
            yield
        finally:
            state.started = False
            await backend.shutdown()

    app = FastAPI(title="Tessera", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible inference server with a pluggable optimization stack.")
    app.state.tessera = state
    install_error_handlers(app)
    for module in (chat, completions, models, health, metrics):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last = outermost: CORS must answer preflights and decorate 401s too.
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials="*" not in settings.cors_origins)
    return app
