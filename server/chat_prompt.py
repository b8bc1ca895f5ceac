"""Chat request -> prompt token ids, through the model's own chat template (tools included), the way
`transformers.apply_chat_template` would render it. Template failures (for example a template that
rejects a role order) are the client's input problem: a 400, not a 500."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jinja2

from server.errors import bad_request
from server.protocol import ChatCompletionRequest, ChatMessage, ChatTool, NamedToolChoice

# Keys a client must not smuggle into the template through chat_template_kwargs: the first three are set
# by the server; a client-supplied template would be arbitrary (if sandboxed) code to run per request.
_RESERVED_TEMPLATE_KWARGS = {"messages", "tools", "add_generation_prompt", "chat_template"}


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    text: str
    token_ids: list[int]


def _content_text(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""  # templates concatenate content; None would crash them
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise bad_request(f"messages[{index}].content[{j}]: only text content parts are supported "
                              f"(got type {part.type!r})", param=f"messages.{index}.content.{j}")
        texts.append(part.text)
    return "\n".join(texts)


def _arguments(raw: str) -> Any:
    # HF templates expect arguments as a mapping (they `tojson` it); clients send a JSON string.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        d: dict[str, Any] = {"role": m.role, "content": _content_text(m, i)}
        if m.name is not None:
            d["name"] = m.name
        if m.tool_calls:
            d["tool_calls"] = [{"id": tc.id, "type": "function",
                                "function": {"name": tc.function.name,
                                             "arguments": _arguments(tc.function.arguments)}}
                               for tc in m.tool_calls]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.reasoning_content is not None:
            d["reasoning_content"] = m.reasoning_content
        out.append(d)
    return out


def select_tools(tools: list[ChatTool] | None, tool_choice) -> list[dict] | None:
    """The tools the template should show the model, after checking tool_choice against them."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise bad_request("tool_choice requires tools", param="tool_choice")
        return None
    if tool_choice == "none":
        return None
    if isinstance(tool_choice, NamedToolChoice):
        wanted = tool_choice.function.name
        chosen = [t for t in tools if t.function.name == wanted]
        if not chosen:
            raise bad_request(f"tool_choice names function {wanted!r}, which is not in tools",
                              param="tool_choice")
        tools = chosen
    return [t.model_dump(exclude_none=True) for t in tools]


def render_chat(tokenizer, body: ChatCompletionRequest, tools: list[dict] | None) -> ChatPrompt:
    kwargs = {k: v for k, v in (body.chat_template_kwargs or {}).items() if k not in _RESERVED_TEMPLATE_KWARGS}
    add_generation_prompt = True if body.add_generation_prompt is None else body.add_generation_prompt
    try:
        text = tokenizer.apply_chat_template(template_messages(body.messages),
                                             add_generation_prompt=add_generation_prompt, tools=tools, **kwargs)
    except jinja2.TemplateError as exc:
        raise bad_request(f"the chat template rejected the messages: {exc}", param="messages") from exc
    except (TypeError, ValueError) as exc:
        raise bad_request(f"cannot render the chat template: {exc}", param="messages") from exc
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise bad_request("the messages render to an empty prompt", param="messages")
    return ChatPrompt(text, ids)
