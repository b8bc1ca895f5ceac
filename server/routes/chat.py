"""POST /v1/chat/completions."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.chat_prompt import ChatPrompt, render_chat, select_tools
from server.chat_response import ChatContext, chat_events, chat_result
from server.cpu_work import tokenizer_work
from server.dispatch import ERROR_RESPONSES, admit, respond
from server.errors import bad_request
from server.generation import GenerationJob
from server.plugin_options import resolve_plugin_options
from server.protocol import ChatCompletionRequest, ChatCompletionResponse
from server.reasoning import prompt_opens_reasoning
from server.sampling import build_sampling_params, check_unsupported, resolve_max_tokens
from server.state import ServerState, get_state

router = APIRouter()


def _check(body: ChatCompletionRequest) -> None:
    check_unsupported(body)
    if body.response_format is not None and body.response_format.type != "text":
        raise bad_request(f"response_format {body.response_format.type!r} is not supported (no guided decoding)",
                          param="response_format")
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")


async def _render(state: ServerState, body: ChatCompletionRequest, tools: list[dict] | None) -> ChatPrompt:
    size = sum(len(m.content) if isinstance(m.content, str) else 64 for m in body.messages)
    return await tokenizer_work(size, render_chat, state.backend.tokenizer, body, tools)


@router.post("/v1/chat/completions", response_model=None,
             responses={200: {"model": ChatCompletionResponse}, **ERROR_RESPONSES})
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = get_state(request)
    model = state.check_model(body.model)
    _check(body)
    tools = select_tools(body.tools, body.tool_choice)
    ticket = admit(state, "chatcmpl")
    try:
        prompt = await _render(state, body, tools)
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = resolve_max_tokens(len(prompt.token_ids), requested, state.backend.max_model_len)
        top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = build_sampling_params(body, max_tokens, top_logprobs)
        job = GenerationJob(ticket.request_id, prompt.token_ids, params,
                            resolve_plugin_options(body, state.settings.plugins))
        options = body.stream_options
        ctx = ChatContext(
            response_id=ticket.request_id, model=model, created=int(time.time()), n=params.n,
            reasoning=state.settings.enable_reasoning, starts_in_reasoning=prompt_opens_reasoning(prompt.text),
            parse_tools=tools is not None, top_logprobs=top_logprobs,
            include_usage=bool(options and options.include_usage),
            continuous_usage=bool(options and options.continuous_usage_stats))
    except BaseException:
        ticket.release()
        raise
    return await respond(request, ticket, bool(body.stream),
                         lambda: chat_events(state, job, ctx), lambda: chat_result(state, job, ctx))
