"""POST /v1/chat/completions on the fake backend: response shapes, sampling fields, streaming, tools,
reasoning, plugin options."""

from __future__ import annotations

import json

import pytest

from tests.server.conftest import assert_openai_error, chat_body
from tests.server.fake_backend import FakeBackend


def sse_events(response) -> list:
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), response.text
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_plain_chat_shape(client):
    r = client.post("/v1/chat/completions", json=chat_body(max_tokens=5, temperature=0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "fake-model"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "The quick brown fox jumps"
    assert "tool_calls" not in choice["message"] and "reasoning_content" not in choice["message"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5 and usage["prompt_tokens"] > 0


def test_eos_finish_is_stop(client):
    r = client.post("/v1/chat/completions", json=chat_body(temperature=0))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].endswith("everyone was happy.")


def test_n_choices(client):
    body = client.post("/v1/chat/completions", json=chat_body(n=3, max_tokens=4)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 12


def test_logprobs_shape(client):
    body = client.post("/v1/chat/completions",
                       json=chat_body(max_tokens=3, logprobs=True, top_logprobs=2)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2
        assert set(entry["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    no_lp = client.post("/v1/chat/completions", json=chat_body(max_tokens=2)).json()
    assert no_lp["choices"][0]["logprobs"] is None


def test_seed_is_reproducible(client):
    def run(seed):
        return client.post("/v1/chat/completions",
                           json=chat_body(max_tokens=6, temperature=1.0, seed=seed)).json()["choices"][0]["message"]["content"]
    assert run(7) == run(7)
    assert len({run(s) for s in range(6)}) > 1


def test_sampling_fields_reach_the_engine(client, backend):
    client.post("/v1/chat/completions", json=chat_body(
        max_completion_tokens=7, max_tokens=100, temperature=0.5, top_p=0.9, top_k=5, stop=["zzz"], seed=3,
        presence_penalty=0.5, frequency_penalty=-0.5, ignore_eos=True, min_tokens=2, stop_token_ids=[5],
        unknown_field_is_ignored=True))
    params = backend.calls[-1][1]
    assert params.max_tokens == 7  # max_completion_tokens wins over the deprecated max_tokens
    assert (params.temperature, params.top_p, params.top_k, params.seed) == (0.5, 0.9, 5, 3)
    assert params.stop == ("zzz",) and params.stop_token_ids == (5,)
    assert params.ignore_eos and params.min_tokens == 2
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)


def test_max_tokens_omitted_means_rest_of_context(client, backend):
    r = client.post("/v1/chat/completions", json=chat_body())
    prompt_len = r.json()["usage"]["prompt_tokens"]
    assert backend.calls[-1][1].max_tokens == backend.max_model_len - prompt_len


def test_stop_string(client):
    body = client.post("/v1/chat/completions", json=chat_body(temperature=0, stop=" fox")).json()
    assert body["choices"][0]["message"]["content"] == "The quick brown"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["stop_reason"] == " fox"


def test_stream_with_usage(client):
    r = client.post("/v1/chat/completions", json=chat_body(
        max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "The quick brown fox jumps"
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5
    assert all(e["usage"] is None for e in events[:-1])


def test_stream_without_usage_has_no_usage_key(client):
    events = sse_events(client.post("/v1/chat/completions", json=chat_body(max_tokens=2, stream=True)))
    assert all("usage" not in e for e in events)


def test_stream_n_and_logprobs(client):
    events = sse_events(client.post("/v1/chat/completions", json=chat_body(
        max_tokens=3, n=2, stream=True, logprobs=True, top_logprobs=1)))
    indices = {c["index"] for e in events for c in e["choices"]}
    assert indices == {0, 1}
    lps = [c["logprobs"] for e in events for c in e["choices"] if c.get("logprobs")]
    assert sum(len(lp["content"]) for lp in lps) == 6


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}]
TOOL_TEXT = 'Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class SpyTokenizer:
    """Records what the chat template was asked to render."""

    def __init__(self, inner):
        self._inner = inner
        self.rendered: list[dict] = []

    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None, **kwargs):
        self.rendered.append({"messages": messages, "tools": tools, "kwargs": kwargs})
        return self._inner.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                               tools=tools, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture
def tool_client(make_client):
    backend = FakeBackend(TOOL_TEXT)
    backend._tokenizer = SpyTokenizer(backend._tokenizer)
    return make_client(backend), backend


def test_tool_call_parsed(tool_client):
    client, backend = tool_client
    body = client.post("/v1/chat/completions", json=chat_body("Weather in Paris?", tools=TOOLS, temperature=0)).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert backend.tokenizer.rendered[-1]["tools"] == TOOLS


def test_tool_call_streamed(tool_client):
    client, _ = tool_client
    events = sse_events(client.post("/v1/chat/completions",
                                    json=chat_body(tools=TOOLS, temperature=0, stream=True)))
    deltas = [c["delta"] for e in events for c in e["choices"]]
    content = "".join(d.get("content", "") for d in deltas)
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert content == "Checking." and "<tool" not in content
    assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_none_leaves_text_and_hides_tools(tool_client):
    client, backend = tool_client
    body = client.post("/v1/chat/completions",
                       json=chat_body(tools=TOOLS, tool_choice="none", temperature=0)).json()
    assert body["choices"][0]["message"]["content"] == TOOL_TEXT
    assert body["choices"][0]["finish_reason"] == "stop"
    assert backend.tokenizer.rendered[-1]["tools"] is None


def test_tool_history_messages_render(tool_client):
    client, backend = tool_client
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
        {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "tomorrow?"}]},
    ]
    r = client.post("/v1/chat/completions", json={"messages": messages, "tools": TOOLS, "max_tokens": 3})
    assert r.status_code == 200, r.text
    rendered = backend.tokenizer.rendered[-1]["messages"]
    assert rendered[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # a mapping for templates
    assert rendered[1]["content"] == "" and rendered[3]["content"] == "And\ntomorrow?"


def test_named_tool_choice_must_exist(tool_client):
    client, _ = tool_client
    r = client.post("/v1/chat/completions", json=chat_body(
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}))
    assert assert_openai_error(r, 400)["param"] == "tool_choice"


def test_reasoning_content(make_client):
    client = make_client(FakeBackend("<think>2 plus 2 is 4.</think>\n\nIt is 4."))
    msg = client.post("/v1/chat/completions", json=chat_body(temperature=0)).json()["choices"][0]["message"]
    assert msg["reasoning_content"] == "2 plus 2 is 4." and msg["content"] == "It is 4."
    events = sse_events(client.post("/v1/chat/completions", json=chat_body(temperature=0, stream=True)))
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "2 plus 2 is 4."
    assert "".join(d.get("content", "") for d in deltas) == "It is 4."


def test_chat_template_kwargs_pass_through_but_not_reserved(tool_client):
    client, backend = tool_client
    client.post("/v1/chat/completions", json=chat_body(
        max_tokens=1, chat_template_kwargs={"enable_thinking": False, "chat_template": "{{ 1/0 }}"}))
    assert backend.tokenizer.rendered[-1]["kwargs"] == {"enable_thinking": False}
