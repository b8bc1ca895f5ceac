"""Turns a chat choice's generated text into the parts of an assistant message: reasoning, content and
tool calls. One pipeline serves both streaming (feed deltas) and whole responses (feed all, flush), so the
two can never disagree."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.reasoning import ReasoningParser
from server.tool_calls import ParsedToolCall, ToolCallParser


@dataclass(slots=True)
class ChatTextDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ParsedToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


class ChatTextProcessor:
    def __init__(self, reasoning: bool, starts_in_reasoning: bool, parse_tools: bool) -> None:
        self._reasoning = ReasoningParser(starts_in_reasoning) if reasoning else None
        self._tools = ToolCallParser() if parse_tools else None
        self.num_tool_calls = 0

    @property
    def saw_reasoning(self) -> bool:
        return self._reasoning is not None and self._reasoning.saw_reasoning

    def _content(self, reasoning: str, content: str, at_end: bool) -> ChatTextDelta:
        calls: list[ParsedToolCall] = []
        if self._tools is not None:
            content, calls = self._tools.feed(content)
            if at_end:
                tail, more = self._tools.flush()
                content, calls = content + tail, calls + more
        self.num_tool_calls += len(calls)
        return ChatTextDelta(reasoning, content, calls)

    def feed(self, text: str) -> ChatTextDelta:
        if self._reasoning is None:
            return self._content("", text, at_end=False)
        reasoning, content = self._reasoning.feed(text)
        return self._content(reasoning, content, at_end=False)

    def flush(self) -> ChatTextDelta:
        reasoning, content = self._reasoning.flush() if self._reasoning is not None else ("", "")
        return self._content(reasoning, content, at_end=True)


def parse_chat_text(text: str, reasoning: bool, starts_in_reasoning: bool,
                    parse_tools: bool) -> tuple[str | None, str, list[ParsedToolCall]]:
    """(reasoning_content or None, content, tool calls) of a whole generated text."""
    proc = ChatTextProcessor(reasoning, starts_in_reasoning, parse_tools)
    a, b = proc.feed(text), proc.flush()
    reasoning_text = a.reasoning + b.reasoning if proc.saw_reasoning else None
    return reasoning_text, a.content + b.content, a.tool_calls + b.tool_calls
