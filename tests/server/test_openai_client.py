"""Acceptance (issue #3, item 1): the official `openai` client against `tessera serve` running the real
engine in a uvicorn subprocess: chat (plain, streamed with usage), completions, models, tool calls, and
errors raised as the client's own exception types."""

from __future__ import annotations

import json

import openai
import pytest

from tests.server.live_server import REPO, LiveServer

# The default model: real text, real chat template. (synthetic:tiny would be faster but says nothing.)
ENGINE_MODEL = "smollm2-135m-instruct"
API_KEY = "test-key"
needs_engine = pytest.mark.skipif(not (REPO / "engine" / "async_engine.py").is_file(),
                                  reason="engine/async_engine.py is not there yet")

pytestmark = [needs_engine, pytest.mark.slow]


@pytest.fixture(scope="module")
def server():
    with LiveServer.tessera("--model", ENGINE_MODEL, "--dtype", "float32", "--device", "cpu",
                            "--api-key", API_KEY, "--served-model-name", "tessera-test") as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_models(client):
    (model,) = client.models.list().data
    assert model.id == "tessera-test" and model.object == "model"
    assert client.models.retrieve("tessera-test").id == "tessera-test"


def test_chat_plain(client):
    r = client.chat.completions.create(model="tessera-test", messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == "tessera-test"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model="tessera-test", messages=MESSAGES, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # greedy is deterministic


def test_chat_stream_with_usage(client):
    plain = client.chat.completions.create(model="tessera-test", messages=MESSAGES, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="tessera-test", messages=MESSAGES, max_tokens=10,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_chat_n_logprobs_seed(client):
    r = client.chat.completions.create(model="tessera-test", messages=MESSAGES, max_tokens=6, n=2,
                                       logprobs=True, top_logprobs=3, seed=1234, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert len(c.logprobs.content) == r.usage.completion_tokens // 2 or c.finish_reason == "stop"
        for entry in c.logprobs.content:
            assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
    again = client.chat.completions.create(model="tessera-test", messages=MESSAGES, max_tokens=6, n=2,
                                           seed=1234, temperature=1.0)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_max_completion_tokens(client):
    r = client.chat.completions.create(model="tessera-test", messages=MESSAGES, max_completion_tokens=3,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_completions(client):
    r = client.completions.create(model="tessera-test", prompt="The capital of France is", max_tokens=8,
                                  temperature=0, logprobs=2)
    assert r.object == "text_completion" and r.choices[0].text
    assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens
    chunks = list(client.completions.create(model="tessera-test", prompt="The capital of France is", max_tokens=8,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_tool_calls_round_trip(client):
    r = client.chat.completions.create(model="tessera-test", max_tokens=24, temperature=0, tools=[WEATHER_TOOL],
                                       messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    for call in choice.message.tool_calls or []:
        assert call.type == "function" and json.loads(call.function.arguments) is not None
    # A whole tool-calling turn (assistant call + tool result) renders and answers.
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees and sunny"},
    ]
    r = client.chat.completions.create(model="tessera-test", max_tokens=8, tools=[WEATHER_TOOL], messages=history)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_errors_are_client_exception_types(client, server):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tessera-test", messages=MESSAGES, max_tokens=10**6)
    assert exc.value.code == "context_length_exceeded" and "1000000" in exc.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tessera-test", messages=MESSAGES, temperature=7)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tessera-test", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tessera-test", prompt="hi", extra_body={"plugins": {"nope": {}}})
    bad_key = openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    # The client's stream raises APIError on an in-stream error event; none here: a clean stream ends.
    stream = client.chat.completions.create(model="tessera-test", messages=MESSAGES, max_tokens=2, stream=True)
    assert len(list(stream)) >= 2


def test_probes_need_no_key(server):
    import httpx

    assert httpx.get(server.base_url + "/health").status_code == 200
    assert httpx.get(server.base_url + "/ready").status_code == 200
    assert httpx.get(server.base_url + "/metrics").status_code == 401
    m = server.metrics(headers={"Authorization": f"Bearer {API_KEY}"})
    assert m["tessera:generation_tokens_total"] > 0


