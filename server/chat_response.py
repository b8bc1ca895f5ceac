"""Engine outputs -> chat completion bodies: the whole `chat.completion`, or the `chat.completion.chunk`
stream. Each choice's text goes through the same ChatTextProcessor in both, so reasoning and tool calls
come out identically whether streamed or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from server.chat_text import ChatTextDelta, ChatTextProcessor, parse_chat_text
from server.generation import GenerationJob, JobResult, collect, iterate_outputs
from server.logprobs import TokenTexts, chat_logprobs
from server.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    DeltaMessage,
    DeltaToolCall,
    DeltaToolCallFunction,
    ResponseFunctionCall,
    ResponseMessage,
    ResponseToolCall,
    Usage,
)
from server.state import ServerState
from server.tool_calls import ParsedToolCall


@dataclass(frozen=True, slots=True)
class ChatContext:
    response_id: str
    model: str
    created: int
    n: int
    reasoning: bool
    starts_in_reasoning: bool
    parse_tools: bool
    top_logprobs: int | None  # None: no logprobs requested
    include_usage: bool = False
    continuous_usage: bool = False

    def processor(self) -> ChatTextProcessor:
        return ChatTextProcessor(self.reasoning, self.starts_in_reasoning, self.parse_tools)


def _finish_reason(reason: str | None, made_tool_calls: bool) -> str | None:
    # OpenAI reports a turn that ends in tool calls as "tool_calls", not "stop".
    return "tool_calls" if made_tool_calls and reason == "stop" else reason


def _response_tool_calls(calls: list[ParsedToolCall]) -> list[ResponseToolCall] | None:
    if not calls:
        return None
    return [ResponseToolCall(id=c.id, function=ResponseFunctionCall(name=c.name, arguments=c.arguments))
            for c in calls]


def build_chat_response(state: ServerState, ctx: ChatContext, result: JobResult) -> dict:
    texts = TokenTexts(state.backend.tokenizer)
    choices = []
    for s in result.samples:
        reasoning, content, calls = parse_chat_text(s.text, ctx.reasoning, ctx.starts_in_reasoning,
                                                    ctx.parse_tools)
        message = ResponseMessage(content=content if content or not calls else None,
                                  reasoning_content=reasoning, tool_calls=_response_tool_calls(calls))
        logprobs = chat_logprobs(s.logprobs, ctx.top_logprobs, texts) if ctx.top_logprobs is not None else None
        choices.append(ChatChoice(index=s.index, message=message, logprobs=logprobs,
                                  finish_reason=_finish_reason(s.finish_reason, bool(calls)),
                                  stop_reason=s.stop_reason))
    completion_tokens = sum(len(s.token_ids) for s in result.samples)
    return ChatCompletionResponse(
        id=ctx.response_id, created=ctx.created, model=ctx.model, choices=choices,
        usage=Usage.of(len(result.prompt_token_ids), completion_tokens, result.num_cached_tokens),
    ).model_dump(mode="json")


async def chat_result(state: ServerState, job: GenerationJob, ctx: ChatContext) -> dict:
    return build_chat_response(state, ctx, await collect(state, job))


def _delta(d: ChatTextDelta, tool_index: int) -> DeltaMessage:
    calls = [DeltaToolCall(index=tool_index + k, id=c.id, type="function",
                           function=DeltaToolCallFunction(name=c.name, arguments=c.arguments))
             for k, c in enumerate(d.tool_calls)] or None
    return DeltaMessage(content=d.content or None, reasoning_content=d.reasoning or None, tool_calls=calls)


class _ChunkWriter:
    def __init__(self, ctx: ChatContext, prompt_tokens: int) -> None:
        self.ctx = ctx
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cached_tokens = 0

    def usage(self) -> Usage:
        return Usage.of(self.prompt_tokens, self.completion_tokens, self.cached_tokens)

    def chunk(self, choices: list[ChatChunkChoice], final_usage: bool = False) -> str:
        usage = self.usage() if final_usage or (self.ctx.continuous_usage and self.ctx.include_usage) else None
        return ChatCompletionChunk(id=self.ctx.response_id, created=self.ctx.created, model=self.ctx.model,
                                   choices=choices, usage=usage).model_dump_json(
            exclude=None if self.ctx.include_usage else {"usage"})


async def chat_events(state: ServerState, job: GenerationJob, ctx: ChatContext) -> AsyncIterator[str]:
    """JSON of each chunk: the assistant role first (as OpenAI does, before any token), then deltas,
    a last chunk per choice with its finish_reason, and the usage chunk when include_usage is set."""
    writer = _ChunkWriter(ctx, len(job.prompt_token_ids))
    texts = TokenTexts(state.backend.tokenizer)
    procs = {i: ctx.processor() for i in range(ctx.n)}
    done: set[int] = set()
    for i in range(ctx.n):
        yield writer.chunk([ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
    async with aclosing(iterate_outputs(state, job)) as outputs:
        async for out in outputs:
            writer.cached_tokens = max(writer.cached_tokens, out.num_cached_tokens)
            choices = []
            for o in out.outputs:
                if o.index in done:
                    continue
                proc = procs.setdefault(o.index, ctx.processor())
                writer.completion_tokens += len(o.delta_token_ids)
                tool_index = proc.num_tool_calls
                d = proc.feed(o.delta_text)
                if o.finish_reason is not None:
                    tail = proc.flush()
                    d = ChatTextDelta(d.reasoning + tail.reasoning, d.content + tail.content,
                                      d.tool_calls + tail.tool_calls)
                    done.add(o.index)
                logprobs = None
                if ctx.top_logprobs is not None and o.delta_logprobs:
                    logprobs = chat_logprobs(o.delta_logprobs, ctx.top_logprobs, texts)
                finish = _finish_reason(o.finish_reason, proc.num_tool_calls > 0)
                if d or logprobs is not None or finish is not None:
                    choices.append(ChatChunkChoice(index=o.index, delta=_delta(d, tool_index), logprobs=logprobs,
                                                   finish_reason=finish,
                                                   stop_reason=o.stop_reason if finish else None))
            if choices:
                yield writer.chunk(choices)
    if ctx.include_usage:
        yield writer.chunk([], final_usage=True)
