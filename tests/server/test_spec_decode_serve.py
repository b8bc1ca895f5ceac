"""`tessera serve --plugins spec_decode` on the real default model, driven by the official `openai` client:
a greedy chat completion with per-request `plugins.spec_decode` options is identical to the same request on
a server without the plugin, the drafts really were verified (the plugin's /metrics counters moved), and a
bad option is a 400."""

from __future__ import annotations

import openai
import pytest

from tests.server.live_server import REPO, LiveServer

ENGINE_MODEL = "smollm2-135m-instruct"
SERVE_ARGS = ("--model", ENGINE_MODEL, "--dtype", "float32", "--device", "cpu", "--served-model-name", "m")
needs_engine = pytest.mark.skipif(not (REPO / "engine" / "async_engine.py").is_file(),
                                  reason="engine/async_engine.py is not there yet")
pytestmark = [needs_engine, pytest.mark.slow]

# the answer copies the prompt, so prompt-lookup drafts get accepted and verification really runs
MESSAGES = [{"role": "user", "content": "Repeat this text exactly as written:\n\nThe city council met on Tuesday "
             "to discuss the new park. The park will have a playground, a pond, and a small garden."}]
OPTIONS = {"plugins": {"spec_decode": {"proposer": "ngram", "k": 5, "verifier": "lossless"}}}


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0, timeout=120)


def _greedy(client: openai.OpenAI, **extra) -> str:
    r = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=40, temperature=0, **extra)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    return r.choices[0].message.content


def test_spec_decode_serve_matches_plain_server_and_counts():
    with LiveServer.tessera(*SERVE_ARGS) as plain:
        expected = _greedy(_client(plain))
        assert not any(k.startswith("tessera_spec_decode_") for k in plain.metrics())
    with LiveServer.tessera(*SERVE_ARGS, "--plugins", "spec_decode") as spec:
        client = _client(spec)
        before = spec.metrics()
        assert _greedy(client, extra_body=OPTIONS) == expected
        after = spec.metrics()
        drafted = after["tessera_spec_decode_draft_tokens_total"] - before["tessera_spec_decode_draft_tokens_total"]
        accepted = (after["tessera_spec_decode_accepted_tokens_total"]
                    - before["tessera_spec_decode_accepted_tokens_total"])
        assert after["tessera_spec_decode_drafts_total"] > before["tessera_spec_decode_drafts_total"]
        assert drafted > 0 and 0 < accepted <= drafted
        # opting out of speculation gives the same text and verifies no draft
        assert _greedy(client, extra_body={"plugins": {"spec_decode": {"enable": False}}}) == expected
        assert spec.metrics()["tessera_spec_decode_draft_tokens_total"] == after[
            "tessera_spec_decode_draft_tokens_total"]
        with pytest.raises(openai.BadRequestError, match="spec_decode"):
            _greedy(client, extra_body={"plugins": {"spec_decode": {"k": 0}}})
