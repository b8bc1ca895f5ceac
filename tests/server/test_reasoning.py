"""`<think>` splitting into reasoning_content, whole and streamed, and the shared tag splitter."""

from __future__ import annotations

import pytest

from server.chat_text import ChatTextProcessor, parse_chat_text
from server.reasoning import ReasoningParser, prompt_opens_reasoning, split_reasoning
from server.tag_splitter import TagSplitter


def test_split_basic():
    assert split_reasoning("<think>Let me think.</think>\n\nThe answer is 4.") == ("Let me think.", "The answer is 4.")


def test_no_reasoning_gives_none():
    assert split_reasoning("Just an answer.") == (None, "Just an answer.")


def test_prompt_opened_block():
    # Qwen3/DeepSeek-R1 templates put `<think>` in the prompt: output starts inside the block.
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert split_reasoning("hmm, 2+2=4</think>4", starts_inside=True) == ("hmm, 2+2=4", "4")


def test_unclosed_reasoning_is_all_reasoning():
    assert split_reasoning("<think>still thinking") == ("still thinking", "")


@pytest.mark.parametrize("text", ["<think>a b c</think>answer", "pre<think>x</think>post<think>y</think>",
                                  "<th", "<think></think>", "a < b <thin k> c"])
def test_streaming_matches_whole(text):
    expected = split_reasoning(text)
    for size in (1, 2, 4, 9):
        parser = ReasoningParser()
        r, c = "", ""
        for i in range(0, len(text), size):
            dr, dc = parser.feed(text[i:i + size])
            r, c = r + dr, c + dc
        dr, dc = parser.flush()
        assert ((r + dr) if parser.saw_reasoning else None, c + dc) == expected


def test_tag_splitter_holds_back_partial_tag():
    s = TagSplitter("<think>", "</think>")
    assert [x.text for x in s.feed("abc<thi")] == ["abc"]
    segs = s.feed("nk>xyz")
    assert [(x.inside, x.text) for x in segs if x.text] == [(True, "xyz")]
    assert s.flush() == []


def test_reasoning_then_tool_call():
    text = '<think>need weather</think>\n<tool_call>{"name": "w", "arguments": {}}</tool_call>'
    reasoning, content, calls = parse_chat_text(text, reasoning=True, starts_in_reasoning=False, parse_tools=True)
    assert reasoning == "need weather"
    assert content == ""
    assert [c.name for c in calls] == ["w"]


def test_tool_tags_inside_reasoning_are_not_calls():
    text = '<think>maybe <tool_call>{"name": "w"}</tool_call></think>ok'
    reasoning, content, calls = parse_chat_text(text, reasoning=True, starts_in_reasoning=False, parse_tools=True)
    assert calls == [] and content == "ok" and "<tool_call>" in reasoning


def test_processor_disabled_passes_text_through():
    proc = ChatTextProcessor(reasoning=False, starts_in_reasoning=False, parse_tools=False)
    d = proc.feed("<think>x</think>")
    assert d.content == "<think>x</think>" and d.reasoning == ""
