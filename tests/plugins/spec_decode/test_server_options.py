"""`plugins.spec_decode` in a request body reaches the engine validated; bad options are a 400 naming the
plugin; `tessera serve --plugins spec_decode` resolves the plugin by name."""

from __future__ import annotations

import pytest

from plugins.registry import get_plugin_class, list_plugins
from tests.server.conftest import assert_openai_error, chat_body


@pytest.fixture
def spec_client(make_client, backend):
    return make_client(backend, plugins=("spec_decode",))


def test_registered_by_name():
    assert "spec_decode" in list_plugins()
    assert get_plugin_class("spec_decode").__name__ == "SpecDecodePlugin"


def test_options_reach_the_engine(spec_client, backend):
    r = spec_client.post("/v1/chat/completions", json=chat_body(
        max_tokens=1, plugins={"spec_decode": {"enable": True, "k": 3, "tau": 0.5}}))
    assert r.status_code == 200, r.text
    opts = backend.calls[-1][3]["spec_decode"]
    assert opts["enable"] is True and opts["k"] == 3 and opts["tau"] == 0.5
    spec_client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1,
                                               "vllm_xargs": {"spec_decode.k": 2}})
    assert backend.calls[-1][3]["spec_decode"]["k"] == 2


@pytest.mark.parametrize("options", [{"k": 0}, {"k": "many"}, {"tau": -0.5}, {"enable": "maybe"},
                                     {"unknown": 1}])
def test_bad_options_are_400(spec_client, options):
    err = assert_openai_error(spec_client.post("/v1/chat/completions", json=chat_body(
        plugins={"spec_decode": options})), 400)
    assert err["param"] == "plugins.spec_decode"


def test_metrics_endpoint_exports_plugin_series(make_client, backend):
    from types import SimpleNamespace

    from plugins.registry import create_plugin

    plugin = create_plugin("spec_decode", {})
    plugin.metrics.record(drafted=4, accepted=3, emitted=4)
    backend.engine = SimpleNamespace(plugins=[plugin])  # what the native backend exposes
    text = make_client(backend).get("/metrics").text
    assert "tessera_spec_decode_drafts_total 1.0" in text
    assert "tessera_spec_decode_accepted_tokens_total 3.0" in text
    assert 'tessera_spec_decode_acceptance_by_position{position="3"} 0.0' in text
