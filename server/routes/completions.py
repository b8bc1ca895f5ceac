"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.completion_response import CompletionContext, completion_events, completion_result
from server.cpu_work import tokenizer_work
from server.dispatch import ERROR_RESPONSES, admit, respond
from server.errors import bad_request
from server.generation import GenerationJob
from server.plugin_options import resolve_plugin_options
from server.protocol import CompletionRequest, CompletionResponse
from server.sampling import build_sampling_params, check_unsupported, resolve_max_tokens
from server.state import ServerState, get_state

router = APIRouter()

# Prompts x samples per request: a bound keeps one request from monopolizing the engine.
MAX_SEQUENCES_PER_REQUEST = 256


def _check(body: CompletionRequest) -> None:
    check_unsupported(body)
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise bad_request("best_of other than n is not supported", param="best_of")
    if body.echo and body.logprobs is not None:
        raise bad_request("echo together with logprobs is not supported (no prompt logprobs)", param="echo")


def _prompts(state: ServerState, body: CompletionRequest) -> list[tuple[str, list[int]]]:
    """(text, token ids) of each prompt; `prompt` may be text, token ids, or a list of either."""
    tokenizer = state.backend.tokenizer
    raw = body.prompt
    items = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)
    if not items:
        raise bad_request("prompt must not be empty", param="prompt")
    if len(items) * (body.n or 1) > MAX_SEQUENCES_PER_REQUEST:
        raise bad_request(f"at most {MAX_SEQUENCES_PER_REQUEST} prompts x n per request", param="prompt")
    vocab = tokenizer.vocab_size
    out = []
    for k, item in enumerate(items):
        if isinstance(item, str):
            ids = tokenizer.encode(item, add_special_tokens=True)
            text = item
        else:
            ids = list(item)
            if any(not 0 <= t < vocab for t in ids):
                raise bad_request(f"prompt {k} holds token ids outside the vocabulary [0, {vocab})", param="prompt")
            text = tokenizer.decode(ids, skip_special_tokens=False)
        if not ids:
            raise bad_request("prompt must not be empty" if len(items) == 1 else f"prompt {k} is empty",
                              param="prompt")
        out.append((text, ids))
    return out


@router.post("/v1/completions", response_model=None,
             responses={200: {"model": CompletionResponse}, **ERROR_RESPONSES})
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = get_state(request)
    model = state.check_model(body.model)
    _check(body)
    ticket = admit(state, "cmpl")
    try:
        raw = body.prompt
        size = len(raw) if isinstance(raw, str) else sum(len(p) if isinstance(p, str) else 0 for p in raw)
        prompts = await tokenizer_work(size, _prompts, state, body)
        plugin_options = resolve_plugin_options(body, state.settings.plugins)
        jobs = []
        for k, (_text, ids) in enumerate(prompts):
            max_tokens = resolve_max_tokens(len(ids), body.max_tokens, state.backend.max_model_len, what="prompt")
            params = build_sampling_params(body, max_tokens, body.logprobs)
            request_id = ticket.request_id if len(prompts) == 1 else f"{ticket.request_id}-{k}"
            jobs.append(GenerationJob(request_id, ids, params, plugin_options))
        ticket.engine_request_ids = [job.request_id for job in jobs]
        options = body.stream_options
        ctx = CompletionContext(
            response_id=ticket.request_id, model=model, created=int(time.time()), n=body.n or 1,
            echo_texts=tuple(t for t, _ in prompts) if body.echo else None, logprobs=body.logprobs,
            include_usage=bool(options and options.include_usage),
            continuous_usage=bool(options and options.continuous_usage_stats))
    except BaseException:
        ticket.release()
        raise
    return await respond(request, ticket, bool(body.stream),
                         lambda: completion_events(state, jobs, ctx), lambda: completion_result(state, jobs, ctx))
