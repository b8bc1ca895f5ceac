"""Fixtures for server tests: apps on the fake backend (fast, in-process)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import ServerSettings
from tests.server.fake_backend import FakeBackend


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def make_client():
    """make_client(backend, **settings) -> a started TestClient; closed (lifespan shutdown) after the test."""
    clients: list[TestClient] = []

    def make(backend: FakeBackend | None = None, **settings) -> TestClient:
        app = create_app(backend or FakeBackend(), ServerSettings(**settings))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client, backend) -> TestClient:
    return make_client(backend)


def chat_body(content: str = "Hello!", **extra) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


def assert_openai_error(response, status: int | None = None) -> dict:
    """The body is exactly OpenAI's error shape; returns the inner error object."""
    if status is not None:
        assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert "Traceback" not in err["message"]
    return err
