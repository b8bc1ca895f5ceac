"""/metrics: vLLM-parallel names under `tessera:`, engine gauges read at scrape time, a registry per app."""

from __future__ import annotations

import re

from tests.server.conftest import chat_body
from tests.server.fake_backend import FakeBackend

EXPECTED = [
    "tessera:num_requests_running", "tessera:num_requests_waiting", "tessera:kv_cache_usage_perc",
    "tessera:prefix_cache_hits_total", "tessera:prefix_cache_queries_total", "tessera:num_preemptions_total",
    "tessera:prompt_tokens_total", "tessera:generation_tokens_total",
    "tessera:time_to_first_token_seconds_bucket", "tessera:inter_token_latency_seconds_bucket",
    "tessera:e2e_request_latency_seconds_bucket", "tessera:request_queue_time_seconds_bucket",
    "tessera:kv_cache_blocks_free", "tessera:kv_cache_blocks_total",
]


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


def test_names_and_values(client):
    client.post("/v1/chat/completions", json=chat_body(max_tokens=4))
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in EXPECTED:
        assert name in r.text, name
    assert metric(r.text, "tessera:generation_tokens_total") == 4
    assert metric(r.text, "tessera:time_to_first_token_seconds_count") == 1
    assert metric(r.text, "tessera:inter_token_latency_seconds_count") == 3
    assert metric(r.text, "tessera:e2e_request_latency_seconds_count") == 1
    assert metric(r.text, "tessera:num_requests_running") == 0
    assert metric(r.text, "tessera:kv_cache_blocks_free") == metric(r.text, "tessera:kv_cache_blocks_total")
    assert 'finished_reason="length"' in r.text


def test_two_apps_do_not_collide(make_client):
    a = make_client(FakeBackend())
    b = make_client(FakeBackend())
    a.post("/v1/chat/completions", json=chat_body(max_tokens=2))
    assert metric(a.get("/metrics").text, "tessera:e2e_request_latency_seconds_count") == 1
    assert metric(b.get("/metrics").text, "tessera:e2e_request_latency_seconds_count") == 0


def test_rejections_counted(make_client):
    client = make_client(max_num_seqs=1, max_queue=0)
    held = client.app.state.tessera.admission.admit("held")
    client.post("/v1/chat/completions", json=chat_body())
    held.release()
    assert 'tessera:request_rejected_total{model_name="fake-model",reason="queue_full"} 1.0' in client.get("/metrics").text
