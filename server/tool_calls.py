"""Tool calls in the Hermes / Qwen format: the model writes

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and the server returns each block as an OpenAI `tool_calls` entry, with `arguments` as a JSON string.
A block whose body is not a valid call stays in `content` verbatim: the text is never silently lost.

Streaming sends each call whole, in one delta, once its closing tag has arrived. OpenAI streams the
arguments in pieces, but clients accumulate deltas either way, and a complete call can be validated
before anything is sent."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from server.tag_splitter import TagSplitter

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    name: str
    arguments: str  # JSON text
    id: str = ""


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_tool_call(body: str) -> ParsedToolCall | None:
    """One block's body -> a call, or None if it is not `{"name": str, "arguments"|"parameters": ...}`."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        # Some models emit the arguments already serialized; keep them if they are JSON.
        try:
            json.loads(args)
        except ValueError:
            return None
        arguments = args
    else:
        arguments = json.dumps(args, ensure_ascii=False)
    return ParsedToolCall(name=obj["name"], arguments=arguments, id=new_tool_call_id())


class ToolCallParser:
    """Streaming: feed content deltas, get (content_delta, completed calls)."""

    def __init__(self) -> None:
        self._splitter = TagSplitter(TOOL_OPEN, TOOL_CLOSE)
        self._block: list[str] = []
        self._in_block = False

    def _handle(self, segments, at_end: bool = False) -> tuple[str, list[ParsedToolCall]]:
        content: list[str] = []
        calls: list[ParsedToolCall] = []
        for seg in segments:
            if not seg.inside:
                content.append(seg.text)
                continue
            self._in_block = True
            self._block.append(seg.text)
            if seg.closed:
                self._finish_block(content, calls, closed=True)
        if at_end and self._in_block:
            # The output ended inside a block (e.g. max_tokens): keep it if it is still a whole call.
            self._finish_block(content, calls, closed=False)
        return "".join(content), calls

    def _finish_block(self, content: list[str], calls: list[ParsedToolCall], closed: bool) -> None:
        body = "".join(self._block)
        self._block, self._in_block = [], False
        call = parse_tool_call(body.strip())
        if call is not None:
            calls.append(call)
        else:
            content.append(TOOL_OPEN + body + (TOOL_CLOSE if closed else ""))

    def feed(self, text: str) -> tuple[str, list[ParsedToolCall]]:
        return self._handle(self._splitter.feed(text))

    def flush(self) -> tuple[str, list[ParsedToolCall]]:
        return self._handle(self._splitter.flush(), at_end=True)


def extract_tool_calls(text: str) -> tuple[str, list[ParsedToolCall]]:
    """Whole-text version: (remaining content, calls)."""
    parser = ToolCallParser()
    c1, calls1 = parser.feed(text)
    c2, calls2 = parser.flush()
    return c1 + c2, calls1 + calls2
