"""A test plugin that implements every engine-side hook of DESIGN.md section 4 and records the calls:
the engine must call each at the documented moment, honour its results, and survive its failures."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel, ConfigDict

from engine.kv_spec import KVSpec
from engine.sampling_params import SamplingParams
from plugins.base import Action, Plugin
from plugins.registry import register_plugin
from tests.engine.conftest import make_engine


class RecorderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    finish_after: int | None = None
    inject_text: str | None = None
    explode: bool = False


@register_plugin("test_recorder")
@dataclass
class RecorderPlugin(Plugin):
    # oracle drafts: token ids the plugin proposes, per request, in order
    oracle: dict = field(default_factory=dict)
    calls: dict = field(default_factory=dict)

    name = "test_recorder"
    request_options = RecorderOptions

    def _hit(self, hook: str) -> None:
        self.calls[hook] = self.calls.get(hook, 0) + 1

    def setup(self, engine) -> None:
        self._hit("setup")
        self.engine_layers = engine.arch.num_layers

    def close(self) -> None:
        self._hit("close")

    def transform_model(self, model):
        self._hit("transform_model")
        assert next(model.parameters()).device.type == "meta"  # before weights exist
        return model

    def kv_spec(self, layer: int, default: KVSpec) -> KVSpec:
        self._hit("kv_spec")
        return default

    def on_request(self, request) -> None:
        self._hit("on_request")
        if request.plugin_options.get(self.name) and request.plugin_options[self.name].explode:
            raise RuntimeError("boom")

    def after_forward(self, batch, attention_stats) -> None:
        self._hit("after_forward")
        assert batch.num_scheduled_tokens

    def propose(self, batch):
        self._hit("propose")
        drafts = {}
        for req in batch:
            want = self.oracle.get(req.parent_id)
            if want is not None:
                n = req.num_output_tokens
                # the first two drafts follow the oracle, the third is deliberately wrong
                drafts[req.request_id] = want[n:n + 2] + [0]
        return drafts

    def verify(self, batch, drafts, logits):
        self._hit("verify")
        return {}

    def on_tokens(self, request, new_token_ids) -> Action:
        self._hit("on_tokens")
        opts = request.plugin_options.get(self.name)
        if opts and opts.inject_text and request.num_output_tokens == 2:
            return Action("inject", text=opts.inject_text)
        if opts and opts.finish_after and request.num_output_tokens >= opts.finish_after:
            return Action("finish", reason="recorder")
        return Action()


@pytest.fixture(scope="module")
def engines(default_model_dir):
    plain = make_engine()
    hooked = make_engine(plugins=(("test_recorder", {}),))
    return plain, hooked


def _prompt(engine, text="Name three colors."):
    return engine.tokenizer.tokenize_chat([{"role": "user", "content": text}])


def test_load_time_hooks(engines):
    _, hooked = engines
    plugin = hooked.plugins[0]
    assert plugin.calls["setup"] == 1
    assert plugin.calls["transform_model"] == 1
    assert plugin.calls["kv_spec"] == hooked.arch.num_layers


def test_propose_verify_keeps_greedy_output(engines):
    plain, hooked = engines
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    expected = plain.generate([_prompt(plain)], params)[0].outputs[0].token_ids
    plugin = hooked.plugins[0]
    hooked.add_request("spec", _prompt(hooked), params)
    plugin.oracle["spec"] = expected
    steps = 0
    out = None
    while hooked.has_unfinished_requests():
        for o in hooked.step():
            out = o
        steps += 1
    assert out.outputs[0].token_ids == expected
    # two correct drafts per step: far fewer steps than tokens
    assert steps < len(expected) - 6
    assert plugin.calls["propose"] > 0 and plugin.calls["verify"] > 0
    assert plugin.calls["after_forward"] >= steps - 1


def test_on_tokens_inject_and_finish(engines):
    _, hooked = engines
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    hooked.add_request("inj", _prompt(hooked), params,
                       plugin_options={"test_recorder": {"inject_text": " INJECTED", "finish_after": 8}})
    outs = [o for _ in range(100) if hooked.has_unfinished_requests() for o in hooked.step()]
    final = outs[-1].outputs[0]
    assert " INJECTED" in final.text
    assert final.finish_reason == "stop" and final.stop_reason == "recorder"
    assert len(final.token_ids) < 30


def test_bad_options_rejected_and_plugin_error_isolated(engines):
    _, hooked = engines
    params = SamplingParams(temperature=0.0, max_tokens=5)
    with pytest.raises(ValueError, match="test_recorder"):
        hooked.add_request("bad", _prompt(hooked), params, plugin_options={"test_recorder": {"nope": 1}})
    with pytest.raises(ValueError, match="not enabled"):
        hooked.add_request("bad2", _prompt(hooked), params, plugin_options={"other": {}})
    hooked.add_request("boom", _prompt(hooked), params, plugin_options={"test_recorder": {"explode": True}})
    hooked.add_request("fine", _prompt(hooked), params)
    done = {}
    while hooked.has_unfinished_requests():
        for o in hooked.step():
            if o.finished:
                done[o.request_id] = o
    assert done["boom"].outputs[0].finish_reason == "error" and "boom" in done["boom"].error
    assert done["fine"].outputs[0].finish_reason == "length"
    assert hooked.stats().num_blocks_free == hooked.stats().num_blocks_total


def test_close_hook(engines):
    _, hooked = engines
    hooked.close()
    assert hooked.plugins[0].calls["close"] == 1
