"""AsyncEngine: concurrent streams, cancellation by leaving the loop, abort, errors from the
generator and shutdown. One engine (and one event loop) serves the whole module; the shutdown test
runs last."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from engine.async_engine import AsyncEngine
from engine.config import CacheConfig, EngineConfig, ModelConfig
from engine.sampling_params import SamplingParams
from tests.engine.conftest import CHAT_PROMPTS

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def aengine(default_model_dir):
    eng = AsyncEngine(EngineConfig(model=ModelConfig(dtype="float32"),
                                   cache=CacheConfig(kv_cache_memory_bytes=64 << 20)), progress=False)
    await eng.start()
    yield eng
    await eng.shutdown()


def _chat(aengine, text: str) -> list[int]:
    return aengine.tokenizer.tokenize_chat([{"role": "user", "content": text}])


async def _all_blocks_free(aengine, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        st = aengine.stats()
        if st.num_blocks_free == st.num_blocks_total and st.num_running == 0 and st.num_waiting == 0:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


async def _collect(aengine, prompt, params, rid):
    outs = []
    async for out in aengine.generate(prompt, params, rid):
        outs.append(out)
    return outs


async def test_concurrent_streams_match_the_sync_engine(aengine, default_engine):
    prompts = [_chat(aengine, p) for p in CHAT_PROMPTS[1:4]]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    streams = await asyncio.gather(*[_collect(aengine, p, params, f"cc-{i}") for i, p in enumerate(prompts)])
    expected = [o.outputs[0].token_ids for o in default_engine.generate(prompts, params)]
    for outs, exp in zip(streams, expected, strict=True):
        assert outs[-1].finished and all(not o.finished for o in outs[:-1])
        final = outs[-1].outputs[0]
        assert final.token_ids == exp
        assert final.finish_reason == "length"
        # the deltas add up to the final output
        assert [t for o in outs for t in o.outputs[0].delta_token_ids] == exp
        assert "".join(o.outputs[0].delta_text for o in outs) == final.text
    assert await _all_blocks_free(aengine)


async def test_leaving_the_loop_aborts_and_frees_blocks(aengine):
    prompt = _chat(aengine, CHAT_PROMPTS[4])
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    seen = 0
    async for out in aengine.generate(prompt, params, "leaver"):
        seen += 1
        assert not out.finished
        if seen == 2:
            st = aengine.stats()
            break
    assert st.num_blocks_free < st.num_blocks_total or st.num_running == 1
    assert await _all_blocks_free(aengine), "breaking out of the stream must abort the request"
    assert not aengine.engine.has_unfinished_requests()


async def test_abort_ends_the_stream_with_abort(aengine):
    prompt = _chat(aengine, CHAT_PROMPTS[5])
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    outs = []
    async for out in aengine.generate(prompt, params, "aborted"):
        outs.append(out)
        if len(outs) == 1:
            await aengine.abort("aborted")
    assert outs[-1].finished
    assert outs[-1].outputs[0].finish_reason == "abort"
    assert len(outs[-1].outputs[0].token_ids) < 200
    assert await _all_blocks_free(aengine)


async def test_abort_of_an_unknown_request_is_harmless(aengine):
    await aengine.abort("no-such-request")
    outs = await _collect(aengine, _chat(aengine, CHAT_PROMPTS[6]), SamplingParams(temperature=0.0, max_tokens=2),
                          "after-unknown-abort")
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason in ("length", "stop")


async def test_impossible_requests_raise_value_error_from_the_generator(aengine):
    with pytest.raises(ValueError, match="empty"):
        async for _ in aengine.generate([], SamplingParams(max_tokens=4), "empty"):
            pass
    too_long = SamplingParams(max_tokens=aengine.max_model_len)
    with pytest.raises(ValueError, match=str(aengine.max_model_len)):
        async for _ in aengine.generate([1, 2, 3], too_long, "too-long"):
            pass
    with pytest.raises(ValueError, match="vocabulary"):
        async for _ in aengine.generate([1, 10**9], SamplingParams(max_tokens=4), "oov"):
            pass
    assert await _all_blocks_free(aengine)
    assert not aengine.is_dead


async def test_duplicate_request_id_is_rejected(aengine):
    prompt = _chat(aengine, CHAT_PROMPTS[7])
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    first = aengine.generate(prompt, params, "twice")
    await first.__anext__()
    try:
        with pytest.raises(ValueError, match="already in use"):
            async for _ in aengine.generate(prompt, params, "twice"):
                pass
    finally:
        await first.aclose()
    assert await _all_blocks_free(aengine)


async def test_shutdown_ends_pending_streams(aengine):
    """Runs last: the module's engine is shut down here."""
    prompt = _chat(aengine, CHAT_PROMPTS[8])
    params = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)
    first_seen = asyncio.Event()

    async def consume(rid):
        outs = []
        async for out in aengine.generate(prompt, params, rid):
            outs.append(out)
            first_seen.set()
        return outs

    tasks = [asyncio.create_task(consume(f"pending-{i}")) for i in range(2)]
    await asyncio.wait_for(first_seen.wait(), 60)
    await asyncio.wait_for(aengine.shutdown(), 30)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for outs in results:
        assert outs[-1].finished
        assert all(c.finish_reason == "abort" for c in outs[-1].outputs)
        assert len(outs[-1].outputs[0].token_ids) < 500
    with pytest.raises(RuntimeError):
        async for _ in aengine.generate(prompt, params, "after-shutdown"):
            pass
