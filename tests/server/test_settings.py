"""ServerSettings validation and `tessera serve` argument handling (no server is started here)."""

from __future__ import annotations

import dataclasses

import pytest

from server.cli import build_parser
from server.commands.serve import build_engine_config, build_settings
from server.settings import ServerSettings


def test_defaults_are_safe():
    s = ServerSettings()
    assert s.host == "127.0.0.1" and s.cors_origins == () and s.api_key is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1


@pytest.mark.parametrize("kwargs", [{"port": 70000}, {"max_queue": -1}, {"shutdown_timeout": -1},
                                    {"request_timeout": 0}, {"api_key": " "}, {"max_num_seqs": 0},
                                    {"served_model_name": ""}])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        ServerSettings(**kwargs)


def parse(*argv):
    return build_parser().parse_args(["serve", *argv])


def test_serve_arguments(monkeypatch, tmp_path):
    monkeypatch.delenv("TESSERA_API_KEY", raising=False)
    args = parse("--model", "synthetic:tiny", "--port", "9000", "--served-model-name", "m", "--max-queue", "4",
                 "--shutdown-timeout", "3", "--request-timeout", "9", "--cors-origins", "https://a,https://b",
                 "--max-num-seqs", "8", "--max-num-batched-tokens", "64", "--dtype", "float32", "--device", "cpu")
    s = build_settings(args)
    assert (s.port, s.served_model_name, s.max_queue, s.max_num_seqs) == (9000, "m", 4, 8)
    assert (s.shutdown_timeout, s.request_timeout, s.api_key) == (3.0, 9.0, None)
    assert s.cors_origins == ("https://a", "https://b")
    cfg = build_engine_config(args)
    assert cfg.model.model == "synthetic:tiny" and cfg.model.dtype == "float32"
    assert (cfg.scheduler.max_num_seqs, cfg.scheduler.max_num_batched_tokens) == (8, 64)
    assert cfg.device.device == "cpu"
    assert parse("--max-queue", "-1") and build_settings(parse("--max-queue", "-1")).max_queue is None


def test_default_model_and_api_key_from_env(monkeypatch):
    monkeypatch.setenv("TESSERA_API_KEY", "from-env")
    args = parse()
    assert build_settings(args).api_key == "from-env"
    assert build_settings(parse("--api-key", "flag")).api_key == "flag"
    assert build_engine_config(args).model.model == "smollm2-135m-instruct"


def test_plugin_config(tmp_path):
    from plugins.base import Plugin
    from plugins.registry import register_plugin

    @register_plugin("test_serve_plugin")
    @dataclasses.dataclass
    class _P(Plugin):
        alpha: float = 1.0

    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text("alpha: 0.5\n")
    args = parse("--plugin-config", f"test_serve_plugin={cfg_file}")
    assert build_engine_config(args).plugins == (("test_serve_plugin", {"alpha": 0.5}),)
    assert build_settings(args).plugins == ("test_serve_plugin",)
    with pytest.raises(ValueError):
        build_settings(parse("--plugins", "no_such_plugin"))
    with pytest.raises(ValueError):
        build_settings(parse("--plugin-config", "oops"))
    with pytest.raises(ValueError, match="no such file"):
        build_settings(parse("--plugin-config", f"test_serve_plugin={tmp_path / 'missing.yaml'}"))
    args = parse("--plugin-config", f"test_serve_plugin={cfg_file}", "--plugin-option", "test_serve_plugin.alpha=2")
    assert build_engine_config(args).plugins == (("test_serve_plugin", {"alpha": 2}),)  # the option wins
    with pytest.raises(ValueError, match="NAME.KEY=VALUE"):
        build_settings(parse("--plugin-option", "alpha=2"))
