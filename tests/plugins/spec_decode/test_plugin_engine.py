"""The plugin inside the engine (tiny random model: speed and control flow, not quality): safety
switch-off above the batch-size limit, per-request opt-out and k, option validation, the judge at
tau = 0 and at a large tau, and the Prometheus export."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from engine.sampling_params import SamplingParams
from plugins.registry import create_plugin
from tests.engine.conftest import make_engine

# a prompt that repeats itself, so prompt lookup always finds a match to propose
REPEATING = [11, 12, 13, 14, 15, 16] * 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _spy(engine) -> list[dict]:
    """Records every propose() result of the plugin."""
    plugin = engine.plugins[0]
    seen: list[dict] = []
    original = plugin.propose

    def propose(batch):
        out = original(batch)
        seen.append({rid: list(t) for rid, t in out.items()})
        return out

    plugin.propose = propose
    return seen


def _drain(engine) -> dict:
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return done


def test_off_above_max_batch_size_and_on_below():
    engine = make_engine("synthetic:tiny", plugins=(("spec_decode", {"max_batch_size": 2}),))
    seen = _spy(engine)
    for i in range(4):
        engine.add_request(f"r{i}", REPEATING, GREEDY)
    _drain(engine)
    m = engine.plugins[0].metrics
    assert m.steps_off["batch_size"] > 0
    assert not any(seen)  # four decoding requests > 2: never a draft
    engine.add_request("alone", REPEATING, GREEDY)
    _drain(engine)
    assert any("alone" in s for s in seen) and m.drafts > 0


def test_per_request_opt_out_and_k():
    engine = make_engine("synthetic:tiny", plugins=(("spec_decode", {"k": 6, "adaptive_k": False}),))
    seen = _spy(engine)
    engine.add_request("out", REPEATING, GREEDY, plugin_options={"spec_decode": {"enable": False}})
    engine.add_request("k2", REPEATING, GREEDY, plugin_options={"spec_decode": {"k": 2}})
    engine.add_request("dflt", REPEATING, GREEDY)
    _drain(engine)
    assert all("out" not in s for s in seen)
    assert max(len(s["k2"]) for s in seen if "k2" in s) == 2
    assert max(len(s["dflt"]) for s in seen if "dflt" in s) > 2


def test_opt_in_when_off_by_default():
    engine = make_engine("synthetic:tiny", plugins=(("spec_decode", {"enable_by_default": False}),))
    seen = _spy(engine)
    engine.add_request("plain", REPEATING, GREEDY)
    engine.add_request("in", REPEATING, GREEDY, plugin_options={"spec_decode": {"enable": True}})
    _drain(engine)
    assert any("in" in s for s in seen) and all("plain" not in s for s in seen)


@pytest.mark.parametrize("options", [{"k": 0}, {"nope": 1}, {"proposer": "draft"}, {"verifier": "x"},
                                     {"tau": -1}])
def test_bad_request_options_are_value_errors(options):
    engine = make_engine("synthetic:tiny", plugins=(("spec_decode", {}),))
    with pytest.raises(ValueError, match="spec_decode"):
        engine.add_request("bad", REPEATING, GREEDY, plugin_options={"spec_decode": options})
    assert not engine.has_unfinished_requests()


@pytest.mark.parametrize("config", [{"proposer": "nope"}, {"verifier": "nope"}, {"k": 0}, {"tau": -1.0},
                                    {"max_batch_size": 0}, {"ngram_min_n": 3, "ngram_max_n": 2},
                                    {"unknown_field": 1}])
def test_bad_hyperparameters(config):
    with pytest.raises(ValueError):
        plugin = create_plugin("spec_decode", config)
        plugin.setup(type("E", (), {"scheduler": None})())  # proposers validate their own fields


def test_judge_tau_zero_is_exact_and_large_tau_accepts_more():
    plain = make_engine("synthetic:tiny")
    prompt = [5, 17, 300, 42, 7, 99]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    expected = plain.generate([prompt], params)[0].outputs[0].token_ids
    engine = make_engine("synthetic:tiny", plugins=(("spec_decode", {
        "proposer": "draft", "draft_layers": "0", "verifier": "judge", "k": 3, "adaptive_k": False,
        "min_gain": 0.0}),))
    exact = engine.generate([prompt], SamplingParams(**{**params.__dict__}))[0].outputs[0].token_ids
    assert exact != [] and engine.plugins[0].metrics.judge_relaxed == 0
    engine.add_request("t0", prompt, params, plugin_options={"spec_decode": {"tau": 0.0}})
    assert _drain(engine)["t0"].outputs[0].token_ids == expected
    # sampling (drafts and targets differ often): tau = 0 rejects some drafts, a huge tau none, since
    # a random model is never confident
    m = engine.plugins[0].metrics
    sampled = SamplingParams(temperature=1.0, top_k=4, max_tokens=20, ignore_eos=True, n=4, seed=3)
    rates = {}
    for tau in (0.0, 100.0):
        before = (m.accepted_tokens, m.draft_tokens, m.judge_relaxed)
        engine.add_request(f"tau{tau}", prompt, sampled, plugin_options={"spec_decode": {"tau": tau}})
        _drain(engine)
        drafted = m.draft_tokens - before[1]
        assert drafted > 0
        rates[tau] = ((m.accepted_tokens - before[0]) / drafted, m.judge_relaxed - before[2])
    assert rates[0.0][0] < 1.0 and rates[0.0][1] == 0
    assert rates[100.0][0] == 1.0 and rates[100.0][1] > 0


def test_prometheus_export():
    engine = make_engine("synthetic:tiny", plugins=(("spec_decode", {}),))
    engine.generate([REPEATING], GREEDY)
    m = engine.plugins[0].metrics
    registry = CollectorRegistry()
    for c in engine.plugins[0].metric_collectors():
        registry.register(c)
    text = generate_latest(registry).decode()
    assert f"tessera_spec_decode_drafts_total {float(m.drafts)}" in text
    assert f"tessera_spec_decode_accepted_tokens_total {float(m.accepted_tokens)}" in text
    assert 'tessera_spec_decode_steps_off_total{reason="batch_size"}' in text
    assert 'tessera_spec_decode_acceptance_by_position{position="0"}' in text
    assert m.drafts > 0


def test_separately_loaded_lower_precision_draft_is_lossless():
    plain = make_engine("synthetic:tiny")
    prompt = [5, 17, 300, 42, 7, 99]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    expected = plain.generate([prompt], params)[0].outputs[0].token_ids
    engine = make_engine("synthetic:tiny", plugins=(("spec_decode", {
        "proposer": "draft", "draft_model": "synthetic:tiny", "draft_dtype": "bfloat16", "k": 3}),))
    assert engine.generate([prompt], params)[0].outputs[0].token_ids == expected
    m = engine.plugins[0].metrics
    assert m.drafts > 0 and m.accepted_tokens > 0
    with pytest.raises(ValueError, match="draft_dtype"):
        make_engine("synthetic:tiny", plugins=(("spec_decode", {
            "proposer": "draft", "draft_model": "synthetic:tiny", "draft_dtype": "int3"}),))
