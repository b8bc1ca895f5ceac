"""Lossless greedy speculation: token-identical output to the engine without speculation, for every
proposer, on copy-heavy and ordinary prompts in one batch, while drafts really are accepted."""

from __future__ import annotations

import pytest

from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine
from tests.plugins.spec_decode.conftest import PROMPTS, chat

PARAMS = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def plain(default_model_dir):
    return make_engine()


@pytest.fixture(scope="module")
def reference(plain):
    prompts = [chat(plain, p) for p in PROMPTS]
    return prompts, [o.outputs[0].token_ids for o in plain.generate(prompts, PARAMS)]


@pytest.mark.parametrize("config", [
    {"proposer": "ngram"},
    {"proposer": "suffix"},
    # an untrained layer-skipping self-draft of a 30-layer model needs most layers to agree at all
    {"proposer": "draft", "draft_layer_ratio": 0.85, "k": 3},
], ids=["ngram", "suffix", "draft"])
def test_greedy_output_is_identical(reference, config):
    prompts, expected = reference
    engine = make_engine(plugins=(("spec_decode", config),))
    got = [o.outputs[0].token_ids for o in engine.generate(prompts, PARAMS)]
    for g, e in zip(got, expected, strict=True):
        assert g == e
    m = engine.plugins[0].metrics
    assert m.drafts > 0 and m.accepted_tokens > 0
    # accepted drafts mean fewer steps than tokens for the copy prompts
    assert m.mean_accepted_length > 1.0


def test_logprobs_of_accepted_drafts_match(plain, reference):
    prompts, _ = reference
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)
    spec = make_engine(plugins=(("spec_decode", {"proposer": "ngram"}),))
    a = plain.generate(prompts[:1], params)[0].outputs[0]
    b = spec.generate(prompts[:1], params)[0].outputs[0]
    assert b.token_ids == a.token_ids
    assert len(b.logprobs) == len(a.logprobs) == len(a.token_ids)
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        assert x.token_id == y.token_id
        assert y.logprob == pytest.approx(x.logprob, abs=1e-3)
    assert spec.plugins[0].metrics.accepted_tokens > 0
