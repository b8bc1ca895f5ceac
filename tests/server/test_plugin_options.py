"""Per-request `plugins` options: validated by the plugin's own model, 400 on anything wrong."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import BaseModel, ConfigDict, Field

from plugins.base import Plugin
from plugins.registry import register_plugin
from tests.server.conftest import assert_openai_error, chat_body


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: int = Field(8, ge=1)


@register_plugin("test_request_plugin")
@dataclasses.dataclass
class _RequestPlugin(Plugin):
    request_options = _Options


@pytest.fixture
def plugin_client(make_client, backend):
    return make_client(backend, plugins=("test_request_plugin",))


def test_valid_options_reach_the_engine(plugin_client, backend):
    r = plugin_client.post("/v1/chat/completions", json=chat_body(
        max_tokens=1, plugins={"test_request_plugin": {"budget": 3}}))
    assert r.status_code == 200, r.text
    assert backend.calls[-1][3] == {"test_request_plugin": {"budget": 3}}
    plugin_client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert backend.calls[-1][3] is None


def test_vllm_xargs_alias(plugin_client, backend):
    plugin_client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1,
                                                "vllm_xargs": {"test_request_plugin.budget": 5, "other": 1}})
    assert backend.calls[-1][3] == {"test_request_plugin": {"budget": 5}}


@pytest.mark.parametrize("plugins", [{"test_request_plugin": {"budget": 0}},
                                     {"test_request_plugin": {"nope": 1}},
                                     {"no_such_plugin": {}}])
def test_bad_options_are_400(plugin_client, plugins):
    err = assert_openai_error(plugin_client.post("/v1/chat/completions", json=chat_body(plugins=plugins)), 400)
    assert err["param"].startswith("plugins.")


def test_plugin_not_enabled(client):
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat_body(
        plugins={"test_request_plugin": {}})), 400)
    assert err["code"] == "plugin_not_enabled"
