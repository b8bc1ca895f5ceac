"""POST /v1/completions on the fake backend."""

from __future__ import annotations

from tests.server.conftest import assert_openai_error
from tests.server.test_chat_completions import sse_events


def test_plain_completion(client, backend):
    r = client.post("/v1/completions", json={"model": "fake-model", "prompt": "Once upon a time", "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["text"] == "The quick brown fox jumps over the lazy dog. It was a sunny day,"
    assert choice["finish_reason"] == "length"  # legacy default max_tokens is 16
    assert body["usage"]["completion_tokens"] == 16
    assert backend.calls[-1][1].max_tokens == 16


def test_token_prompts_batch_and_n(client):
    body = client.post("/v1/completions", json={"prompt": [[1, 2, 3], [4, 5]], "n": 2, "max_tokens": 2}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 8


def test_echo(client):
    body = client.post("/v1/completions", json={"prompt": "Hi", "echo": True, "max_tokens": 2, "temperature": 0}).json()
    assert body["choices"][0]["text"] == "HiThe quick"


def test_logprobs_legacy_shape(client):
    lp = client.post("/v1/completions", json={"prompt": "Hi", "logprobs": 2, "max_tokens": 3,
                                              "temperature": 0}).json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["The", " quick", " brown"]
    assert lp["text_offset"] == [0, 3, 9]
    assert len(lp["token_logprobs"]) == 3 and all(len(t) <= 2 for t in lp["top_logprobs"])


def test_stream(client):
    events = sse_events(client.post("/v1/completions", json={
        "prompt": ["a", "b"], "max_tokens": 3, "stream": True, "temperature": 0,
        "stream_options": {"include_usage": True}}))
    texts = {0: "", 1: ""}
    for e in events[:-1]:
        for c in e["choices"]:
            texts[c["index"]] += c["text"]
    assert texts == {0: "The quick brown", 1: "The quick brown"}
    assert events[-1]["usage"]["completion_tokens"] == 6


def test_completion_errors(client):
    assert_openai_error(client.post("/v1/completions", json={"prompt": ""}), 400)
    assert_openai_error(client.post("/v1/completions", json={"prompt": []}), 400)
    assert_openai_error(client.post("/v1/completions", json={"prompt": [10**9]}), 400)
    assert_openai_error(client.post("/v1/completions", json={"prompt": "x", "suffix": "y"}), 400)
    assert_openai_error(client.post("/v1/completions", json={"prompt": "x", "best_of": 3}), 400)
    assert_openai_error(client.post("/v1/completions", json={"prompt": "x", "echo": True, "logprobs": 1}), 400)
    err = assert_openai_error(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 5000}), 400)
    assert "2048" in err["message"] and "5000" in err["message"] and err["code"] == "context_length_exceeded"


def test_stream_n_one_finish_per_choice(client):
    # Samples finish at different steps (stop string hit by one only); each choice ends exactly once.
    events = sse_events(client.post("/v1/completions", json={
        "prompt": "x", "n": 4, "max_tokens": 12, "stream": True, "seed": 5, "stop": ["dog"]}))
    finishes = [(c["index"], c["finish_reason"]) for e in events for c in e["choices"] if c["finish_reason"]]
    assert sorted(i for i, _ in finishes) == [0, 1, 2, 3]
