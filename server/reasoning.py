"""Reasoning models write their chain of thought inside `<think>...</think>`; OpenAI-compatible servers
return it as `reasoning_content` (message and stream delta) and keep `content` for the answer.

Some chat templates (Qwen3, DeepSeek-R1) open the `<think>` block in the prompt itself, so the model's
output starts inside it and only the closing tag appears: the prompt decides the starting state."""

from __future__ import annotations

from server.tag_splitter import TagSplitter

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def prompt_opens_reasoning(prompt_text: str) -> bool:
    """True when the rendered prompt ends inside an open `<think>` block."""
    tail = prompt_text.rstrip()
    return tail.endswith(THINK_OPEN)


class ReasoningParser:
    """Streaming splitter: feed text deltas, get (reasoning_delta, content_delta)."""

    def __init__(self, starts_inside: bool = False) -> None:
        self._splitter = TagSplitter(THINK_OPEN, THINK_CLOSE, inside=starts_inside)
        self.saw_reasoning = starts_inside

    def _route(self, segments) -> tuple[str, str]:
        reasoning, content = [], []
        for seg in segments:
            if seg.inside:
                self.saw_reasoning = True
                reasoning.append(seg.text)
            else:
                content.append(seg.text)
        return "".join(reasoning), "".join(content)

    def feed(self, text: str) -> tuple[str, str]:
        return self._route(self._splitter.feed(text))

    def flush(self) -> tuple[str, str]:
        return self._route(self._splitter.flush())


def split_reasoning(text: str, starts_inside: bool = False) -> tuple[str | None, str]:
    """Whole-text version: (reasoning or None when the model did not reason, content)."""
    parser = ReasoningParser(starts_inside)
    r1, c1 = parser.feed(text)
    r2, c2 = parser.flush()
    return (r1 + r2 if parser.saw_reasoning else None), c1 + c2
