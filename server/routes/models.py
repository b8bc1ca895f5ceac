"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.dispatch import ERROR_RESPONSES
from server.protocol import ModelCard, ModelList
from server.state import ServerState, get_state

router = APIRouter()


def _card(state: ServerState) -> ModelCard:
    return ModelCard(id=state.model_name, created=state.created, root=state.backend.model_name,
                     max_model_len=state.backend.max_model_len)


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(get_state(request))])


@router.get("/v1/models/{model:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    state = get_state(request)
    state.check_model(model)
    return _card(state)
