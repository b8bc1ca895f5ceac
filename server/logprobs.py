"""Engine logprobs -> OpenAI's two shapes: chat (`{"content": [{token, logprob, bytes, top_logprobs}]}`)
and legacy completions (`{tokens, token_logprobs, top_logprobs, text_offset}`)."""

from __future__ import annotations

import math

from engine.outputs import TokenLogprob
from server.protocol import ChatLogprobs, CompletionLogprobs, TokenLogprobEntry, TopLogprob

# JSON has no -inf; vLLM reports impossible tokens as -9999 too.
_FLOOR = -9999.0


def _lp(value: float) -> float:
    return value if math.isfinite(value) and value > _FLOOR else _FLOOR


class TokenTexts:
    """Token id -> the text it contributes (not the raw BPE piece such as "Ġhello"), cached per request."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False)
            self._cache[token_id] = text
        return text


def chat_logprobs(entries: list[TokenLogprob], top_n: int, texts: TokenTexts) -> ChatLogprobs:
    content = []
    for e in entries:
        token = texts(e.token_id)
        top = [TopLogprob(token=(t := texts(tid)), logprob=_lp(lp), bytes=list(t.encode()))
               for tid, lp in e.top[:top_n]]
        content.append(TokenLogprobEntry(token=token, logprob=_lp(e.logprob), bytes=list(token.encode()),
                                         top_logprobs=top))
    return ChatLogprobs(content=content)


def completion_logprobs(entries: list[TokenLogprob], top_n: int, texts: TokenTexts,
                        offset: int = 0) -> CompletionLogprobs:
    """`offset` is the text position of the first token (after the echoed prompt, or after earlier chunks)."""
    out = CompletionLogprobs()
    for e in entries:
        token = texts(e.token_id)
        out.tokens.append(token)
        out.token_logprobs.append(_lp(e.logprob))
        out.text_offset.append(offset)
        offset += len(token)
        top = {texts(tid): _lp(lp) for tid, lp in e.top[:top_n]} if top_n else None
        out.top_logprobs.append(top)
    return out
