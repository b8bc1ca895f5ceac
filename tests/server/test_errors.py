"""Every failure in OpenAI's error shape with the right status: validation 400 (never 422), unknown model
and route 404, context window 400 with token counts, engine failures 500 without a stack trace."""

from __future__ import annotations

import pytest

from tests.server.conftest import assert_openai_error, chat_body
from tests.server.fake_backend import FakeBackend
from tests.server.test_chat_completions import sse_events


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["ok", ""]}, None),
    ({"messages": [{"role": "user", "content": "x"}], "min_tokens": 9, "max_tokens": 3}, None),
])
def test_validation_is_400_in_openai_shape(client, body, param):
    err = assert_openai_error(client.post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


def test_malformed_json_and_wrong_types(client):
    r = client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert "invalid JSON" in assert_openai_error(r, 400)["message"]
    assert_openai_error(client.post("/v1/chat/completions", content=b"[1, 2]",
                                    headers={"content-type": "application/json"}), 400)
    assert_openai_error(client.post("/v1/chat/completions", content=b"hello", headers={"content-type": "text/plain"}), 400)


def test_unknown_model_404(client):
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(model="gpt-9")), 404)
    assert err["code"] == "model_not_found" and "gpt-9" in err["message"]
    assert_openai_error(client.get("/v1/models/gpt-9"), 404)


def test_unknown_route_and_method(client):
    assert_openai_error(client.get("/v1/nothing"), 404)
    assert_openai_error(client.get("/v1/chat/completions"), 405)


def test_context_window_names_both_counts(client):
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(max_tokens=3000)), 400)
    assert "2048" in err["message"] and "3000" in err["message"] and "in the messages" in err["message"]
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body("word " * 2100)), 400)
    assert err["code"] == "context_length_exceeded"


def test_engine_exception_is_500_without_trace(make_client):
    backend = FakeBackend()
    backend.fail_mode = "raise"
    client = make_client(backend)
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(max_tokens=3)), 500)
    assert err["message"] == "internal server error"
    events = sse_events(client.post("/v1/chat/completions", json=chat_body(max_tokens=3, stream=True)))
    assert events[-1]["error"]["type"] == "server_error"
    assert backend.idle()


def test_engine_error_output_is_500_with_its_message(make_client):
    backend = FakeBackend()
    backend.fail_mode = "error_output"
    client = make_client(backend)
    err = assert_openai_error(client.post("/v1/completions", json={"prompt": "x"}), 500)
    assert "fake plugin exploded" in err["message"]


def test_request_timeout(make_client):
    backend = FakeBackend(token_delay=0.05)
    client = make_client(backend, request_timeout=0.2)
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(ignore_eos=True)), 504)
    assert err["code"] == "timeout"
    assert backend.idle()


def test_body_limit_413(make_client):
    client = make_client(max_body_bytes=1000)
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body("x" * 2000)), 413)
    assert "1000" in err["message"]

    def chunks():
        for _ in range(5):
            yield b" " * 400

    r = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(r, 413)


def test_long_prompt_is_tokenized_off_loop(client):
    err = assert_openai_error(client.post("/v1/completions", json={"prompt": "word " * 20_000}), 400)
    assert err["code"] == "context_length_exceeded"
