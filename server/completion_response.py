"""Engine outputs -> legacy text completion bodies (`text_completion`), whole or streamed. A request may
hold several prompts; choice `i * n + j` is sample j of prompt i, as in OpenAI's API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from server.generation import GenerationJob, collect_many, iterate_outputs, merge_streams
from server.logprobs import TokenTexts, completion_logprobs
from server.protocol import CompletionChoice, CompletionResponse, Usage
from server.state import ServerState


@dataclass(frozen=True, slots=True)
class CompletionContext:
    response_id: str
    model: str
    created: int
    n: int
    echo_texts: tuple[str, ...] | None  # per prompt, when echo is set
    logprobs: int | None
    include_usage: bool = False
    continuous_usage: bool = False


async def completion_result(state: ServerState, jobs: list[GenerationJob], ctx: CompletionContext) -> dict:
    results = await collect_many(state, jobs)
    texts = TokenTexts(state.backend.tokenizer)
    choices = []
    for i, result in enumerate(results):
        prefix = ctx.echo_texts[i] if ctx.echo_texts else ""
        for s in result.samples:
            logprobs = (completion_logprobs(s.logprobs, ctx.logprobs, texts, offset=len(prefix))
                        if ctx.logprobs is not None else None)
            choices.append(CompletionChoice(index=i * ctx.n + s.index, text=prefix + s.text, logprobs=logprobs,
                                            finish_reason=s.finish_reason, stop_reason=s.stop_reason))
    usage = Usage.of(sum(len(r.prompt_token_ids) for r in results),
                     sum(len(s.token_ids) for r in results for s in r.samples),
                     sum(r.num_cached_tokens for r in results))
    return CompletionResponse(id=ctx.response_id, created=ctx.created, model=ctx.model, choices=choices,
                              usage=usage).model_dump(mode="json")


async def completion_events(state: ServerState, jobs: list[GenerationJob],
                            ctx: CompletionContext) -> AsyncIterator[str]:
    texts = TokenTexts(state.backend.tokenizer)
    prompt_tokens = sum(len(j.prompt_token_ids) for j in jobs)
    completion_tokens = 0
    offsets: dict[int, int] = {}  # choice index -> text length sent so far (for logprob text_offset)
    done: set[int] = set()  # the engine keeps listing finished samples; their last chunk is out

    def chunk(choices: list[CompletionChoice], usage: bool = False) -> str:
        body = CompletionResponse(id=ctx.response_id, created=ctx.created, model=ctx.model, choices=choices,
                                  usage=Usage.of(prompt_tokens, completion_tokens) if usage else None)
        return body.model_dump_json(exclude=None if ctx.include_usage else {"usage"})

    streams = [iterate_outputs(state, job) for job in jobs]
    async with aclosing(merge_streams(streams)) as merged:
        async for i, out in merged:
            choices = []
            for o in out.outputs:
                index = i * ctx.n + o.index
                if index in done:
                    continue
                if o.finish_reason is not None:
                    done.add(index)
                completion_tokens += len(o.delta_token_ids)
                text = o.delta_text
                if index not in offsets:
                    # The echoed prompt goes out with the first piece of each choice.
                    text = (ctx.echo_texts[i] if ctx.echo_texts else "") + text
                    offsets[index] = len(text) - len(o.delta_text)
                logprobs = None
                if ctx.logprobs is not None and o.delta_logprobs:
                    logprobs = completion_logprobs(o.delta_logprobs, ctx.logprobs, texts, offset=offsets[index])
                offsets[index] += len(o.delta_text)
                if text or logprobs is not None or o.finish_reason is not None:
                    choices.append(CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                    finish_reason=o.finish_reason, stop_reason=o.stop_reason))
            if choices:
                yield chunk(choices, usage=ctx.continuous_usage and ctx.include_usage)
    if ctx.include_usage:
        yield chunk([], usage=True)
