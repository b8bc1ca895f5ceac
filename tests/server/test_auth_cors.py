"""API key on every route but the probes (401 in OpenAI's shape); CORS off unless origins are set."""

from __future__ import annotations

from tests.server.conftest import assert_openai_error, chat_body


def test_api_key_required(make_client):
    client = make_client(api_key="sekret")
    for method, path in [("get", "/v1/models"), ("get", "/metrics"), ("get", "/v1/nothing"), ("get", "/docs")]:
        err = assert_openai_error(getattr(client, method)(path), 401)
        assert err["code"] == "invalid_api_key"
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(),
                                          headers={"Authorization": "Bearer wrong"}), 401)
    assert "sekret" not in err["message"]
    assert_openai_error(client.get("/v1/models", headers={"Authorization": "sekret"}), 401)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    ok = client.post("/v1/chat/completions", json=chat_body(max_tokens=1), headers={"Authorization": "Bearer sekret"})
    assert ok.status_code == 200
    assert client.get("/v1/models", headers={"authorization": "bearer sekret"}).status_code == 200


def test_no_api_key_means_open(client):
    assert client.get("/v1/models").status_code == 200


def test_cors_off_by_default(client):
    r = client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = client.options("/v1/chat/completions", headers={"Origin": "https://evil.example",
                                                          "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


def test_cors_configured(make_client):
    client = make_client(cors_origins=("https://app.example",), api_key="k")
    pre = client.options("/v1/chat/completions", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    denied = client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"
    other = client.options("/v1/models", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in other.headers
