"""Property-based fuzzing of the OpenAPI schema (schemathesis): valid and invalid requests against every
operation, in-process on the fake backend. No request may cause a 5xx, and every error must be in
OpenAI's shape. The requests are counted: the run must send at least 500."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from server.app import create_app
from server.settings import ServerSettings
from tests.server.fake_backend import FakeBackend

MIN_REQUESTS = 500
SENT: dict[str, int] = {}


# Tiny outputs keep 500+ requests fast; the API key makes every request exercise authentication too.
# (Built at import: schemathesis' lazy fixture loader does not work with this pytest.)
APP = create_app(FakeBackend(max_generated=4, max_model_len=512), ServerSettings(api_key="fuzz-key"))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers={"Authorization": "Bearer fuzz-key"})
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


def check_response(response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert "Traceback" not in response.text
    elif "text/event-stream" in response.headers.get("content-type", ""):
        events = [line for line in response.text.split("\n") if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]", response.text[-300:]
        for line in events[:-1]:
            json.loads(line[len("data: "):])


@schema.parametrize()
@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_fuzz(case):
    headers = {"Authorization": "Bearer fuzz-key"}
    response = case.call(headers=headers)
    key = f"{case.operation.label} {response.status_code}"
    SENT[key] = SENT.get(key, 0) + 1
    check_response(response)


def test_fuzz_sent_enough_requests():
    total = sum(SENT.values())
    if total == 0:
        pytest.skip("the fuzz tests did not run (deselected)")
    print(f"fuzz requests per operation: {SENT}")
    assert total >= MIN_REQUESTS, SENT
