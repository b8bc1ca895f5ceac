"""Admission control: 429 + Retry-After over the queue limit, 503 while draining, slots always released."""

from __future__ import annotations

import asyncio

import pytest

from engine.stats import EngineStats
from server.admission import AdmissionController
from server.errors import APIError
from server.settings import ServerSettings
from tests.server.conftest import assert_openai_error, chat_body


def controller(stats=None, **settings) -> AdmissionController:
    return AdmissionController(ServerSettings(**settings), stats or (lambda: EngineStats()))


def test_queue_limit_counts_beyond_running_slots():
    adm = controller(max_num_seqs=2, max_queue=1)
    tickets = [adm.admit(f"r{i}") for i in range(3)]  # 2 run, 1 waits
    with pytest.raises(APIError) as exc:
        adm.admit("r3")
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "1"
    tickets[0].release()
    tickets[0].release()  # idempotent
    assert adm.num_inflight == 2
    adm.admit("r4")


def test_engine_waiting_counts_too():
    # Fewer than max_num_seqs run because KV blocks ran out: the engine's own queue is the limit.
    adm = controller(lambda: EngineStats(num_running=1, num_waiting=3), max_num_seqs=64, max_queue=3)
    with pytest.raises(APIError):
        adm.admit("x")


def test_unbounded_queue():
    adm = controller(max_num_seqs=1, max_queue=None)
    for i in range(100):
        adm.admit(str(i))


def test_draining_is_503():
    adm = controller()
    adm.draining = True
    with pytest.raises(APIError) as exc:
        adm.admit("x")
    assert exc.value.status == 503 and "Retry-After" in exc.value.headers


async def test_drain_waits_then_aborts():
    adm = controller()
    quick, slow = adm.admit("quick"), adm.admit("slow")
    aborted = []

    async def abort(request_id):
        aborted.append(request_id)
        slow.release()

    asyncio.get_running_loop().call_later(0.05, quick.release)
    assert await adm.drain(timeout=0.3, abort=abort) is False
    assert aborted == ["slow"] and adm.num_inflight == 0


async def test_drain_finishes_in_time():
    adm = controller()
    t = adm.admit("a")
    asyncio.get_running_loop().call_later(0.05, t.release)
    assert await adm.drain(timeout=5, abort=None) is True


def test_http_429_and_503(make_client):
    client = make_client(max_num_seqs=1, max_queue=0)
    state = client.app.state.tessera
    held = state.admission.admit("held")
    r = client.post("/v1/chat/completions", json=chat_body(max_tokens=1))
    assert assert_openai_error(r, 429)["code"] == "queue_full"
    assert r.headers["Retry-After"] == "1"
    held.release()
    assert client.post("/v1/chat/completions", json=chat_body(max_tokens=1)).status_code == 200
    assert state.admission.num_inflight == 0  # the finished request gave its slot back
    state.admission.draining = True
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert assert_openai_error(r, 503)["code"] == "server_shutting_down" and "Retry-After" in r.headers


def test_slot_released_on_every_path(client):
    state = client.app.state.tessera
    client.post("/v1/chat/completions", json=chat_body(max_tokens=2, stream=True))
    client.post("/v1/chat/completions", json=chat_body(max_tokens=99999))  # 400 after admission
    client.post("/v1/completions", json={"prompt": [10**9]})
    assert state.admission.num_inflight == 0


async def test_drain_timeout_aborts_every_engine_request():
    """In-process: a 2-prompt completion (two engine requests) outlives the drain and is aborted."""
    import httpx

    from server.app import create_app
    from tests.server.fake_backend import FakeBackend

    backend = FakeBackend(token_delay=0.01)
    app = create_app(backend, ServerSettings())
    state = app.state.tessera
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            request = asyncio.create_task(client.post("/v1/completions", json={
                "prompt": ["a", "b"], "max_tokens": 1000, "ignore_eos": True}))
            while state.admission.num_inflight == 0 or backend.stats().num_running < 2:
                await asyncio.sleep(0.01)
            assert await state.admission.drain(timeout=0.1, abort=backend.abort) is False
            r = await asyncio.wait_for(request, 10)
    assert [c["finish_reason"] for c in r.json()["choices"]] == ["abort", "abort"]
    assert backend.idle()
