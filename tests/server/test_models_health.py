"""/v1/models, /health, /ready."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import ServerSettings
from tests.server.conftest import assert_openai_error, chat_body
from tests.server.fake_backend import FakeBackend


def test_models_list_and_retrieve(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == "fake-model" and card["object"] == "model" and card["owned_by"] == "tessera"
    assert card["max_model_len"] == 2048
    assert client.get("/v1/models/fake-model").json()["id"] == "fake-model"


def test_served_model_name_overrides(make_client):
    client = make_client(served_model_name="my-model")
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["my-model"]
    assert client.post("/v1/chat/completions", json=chat_body(model="my-model", max_tokens=1)).status_code == 200
    assert_openai_error(client.post("/v1/chat/completions", json=chat_body(model="fake-model")), 404)


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}


def test_not_ready_before_model_loaded():
    app = create_app(FakeBackend(), ServerSettings())
    client = TestClient(app)  # no lifespan: the backend never started
    err = assert_openai_error(client.get("/ready"), 503)
    assert "loading" in err["message"]
    assert client.get("/health").status_code == 200


def test_not_ready_when_draining(client):
    client.app.state.tessera.admission.draining = True
    assert_openai_error(client.get("/ready"), 503)
    assert client.get("/health").status_code == 200


def test_not_ready_when_steps_stall(make_client):
    backend = FakeBackend()
    client = make_client(backend, ready_step_window=1.0)
    stale = backend.stats()
    stale.num_running, stale.last_step_time = 1, time.monotonic() - 5
    backend.stats = lambda: stale
    assert "no engine step" in assert_openai_error(client.get("/ready"), 503)["message"]
    stale.last_step_time = time.monotonic()
    assert client.get("/ready").status_code == 200
