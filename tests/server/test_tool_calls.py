"""Hermes/Qwen `<tool_call>` parsing on text, whole and streamed in every possible split."""

from __future__ import annotations

import json

import pytest

from server.tool_calls import ToolCallParser, extract_tool_calls, parse_tool_call

WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'


def test_single_call_without_content():
    content, calls = extract_tool_calls(WEATHER)
    assert content == ""
    assert [c.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Paris", "unit": "C"}
    assert calls[0].id.startswith("call_")


def test_content_before_and_several_calls():
    text = 'Let me check.\n' + WEATHER + "\n" + WEATHER.replace("Paris", "Rome")
    content, calls = extract_tool_calls(text)
    assert content == "Let me check.\n"
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert len({c.id for c in calls}) == 2


def test_plain_text_untouched():
    assert extract_tool_calls("no tools here <tool") == ("no tools here <tool", [])


@pytest.mark.parametrize("body", ['{"name": "f", "arguments": {', '[1, 2]', '{"arguments": {}}', 'not json',
                                  '{"name": "f", "arguments": "not json"}'])
def test_invalid_block_stays_in_content(body):
    text = f"<tool_call>{body}</tool_call>"
    content, calls = extract_tool_calls(text)
    assert calls == []
    assert content == text


def test_parameters_alias_and_string_arguments():
    assert json.loads(parse_tool_call('{"name": "f", "parameters": {"x": 1}}').arguments) == {"x": 1}
    assert parse_tool_call('{"name": "f", "arguments": "{\\"x\\": 1}"}').arguments == '{"x": 1}'
    assert parse_tool_call('{"name": "f"}').arguments == "{}"


def test_unterminated_block_at_end():
    complete = '<tool_call>{"name": "f", "arguments": {"a": 1}}'
    assert [c.name for c in extract_tool_calls(complete)[1]] == ["f"]
    cut = '<tool_call>{"name": "f", "argu'
    assert extract_tool_calls(cut) == (cut, [])


@pytest.mark.parametrize("text", ["Sure. " + WEATHER + " done", WEATHER + WEATHER, "a <tool_call>{bad}</tool_call> b"])
def test_streaming_matches_whole_for_every_split(text):
    whole_content, whole_calls = extract_tool_calls(text)
    for size in (1, 2, 3, 5, 7, 11):
        parser = ToolCallParser()
        content, calls = "", []
        for i in range(0, len(text), size):
            c, k = parser.feed(text[i:i + size])
            content, calls = content + c, calls + k
        c, k = parser.flush()
        content, calls = content + c, calls + k
        assert content == whole_content
        assert [(x.name, x.arguments) for x in calls] == [(x.name, x.arguments) for x in whole_calls]


def test_streaming_never_leaks_partial_tag():
    parser = ToolCallParser()
    out = [parser.feed(ch)[0] for ch in "Hi <tool_call>"]
    assert "".join(out) == "Hi "
    assert all("<" not in piece for piece in out)
