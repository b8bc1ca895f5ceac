"""vllm_offline.py's CPU configurations: `mp` leaves vLLM's own process layout and thread binding as
shipped, `inproc` puts engine and model in one process with every core on the model."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os

import pytest

from benchmarks.baselines import BASELINES_DIR

SMOLLM2 = {"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576, "num_hidden_layers": 30}
TUNING = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING", "OMP_NUM_THREADS")


@pytest.fixture
def env(monkeypatch):
    """An empty environment for the script to fill in (the real one is left alone)."""
    fake: dict[str, str] = {}
    monkeypatch.setattr(os, "environ", fake)
    return fake


@pytest.fixture
def vllm_offline(monkeypatch):
    # the script imports its sibling cpu_steal.py as a top-level module, as it does when run by path
    monkeypatch.syspath_prepend(str(BASELINES_DIR))
    return importlib.import_module("vllm_offline")


def _args(tmp_path, mode: str, seqs: int = 64) -> argparse.Namespace:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2))
    return argparse.Namespace(cpu_mode=mode, model_dir=str(tmp_path), dtype="float32", max_num_seqs=seqs,
                              kv_cache_gb=None)


def _cores(monkeypatch, n: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


def test_mp_leaves_vllms_process_layout_and_binding_as_shipped(vllm_offline, env, tmp_path, monkeypatch):
    _cores(monkeypatch, 2)
    chosen = vllm_offline.configure_cpu_env(_args(tmp_path, "mp"), 256)
    assert chosen["cpu_mode"] == "mp" and chosen["cores"] == 2
    assert not any(key in env for key in TUNING), env


def test_inproc_puts_every_core_on_the_model(vllm_offline, env, tmp_path, monkeypatch):
    _cores(monkeypatch, 2)
    chosen = vllm_offline.configure_cpu_env(_args(tmp_path, "inproc"), 256)
    assert chosen["cpu_mode"] == "inproc"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["OMP_NUM_THREADS"] == "2"


def test_a_setting_already_in_the_environment_is_kept(vllm_offline, env, tmp_path, monkeypatch):
    _cores(monkeypatch, 2)
    env["OMP_NUM_THREADS"] = "1"
    vllm_offline.configure_cpu_env(_args(tmp_path, "inproc"), 256)
    assert env["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize(("cores", "mode"), [(2, "inproc"), (7, "inproc"), (8, "mp"), (64, "mp")])
def test_auto_tunes_only_machines_of_few_cores(vllm_offline, env, tmp_path, monkeypatch, cores, mode):
    _cores(monkeypatch, cores)
    assert vllm_offline.configure_cpu_env(_args(tmp_path, "auto"), 256)["cpu_mode"] == mode


@pytest.mark.parametrize("mode", ["mp", "inproc"])
def test_kv_cache_space_holds_the_workload_in_either_mode(vllm_offline, env, tmp_path, monkeypatch, mode):
    _cores(monkeypatch, 2)
    vllm_offline.configure_cpu_env(_args(tmp_path, mode, seqs=512), 256)
    # K and V, 30 layers x 3 KV heads x 64 dims of fp32 per token, for 512 sequences of 256 tokens
    need = 2 * 30 * 3 * 64 * 4 * 256 * 512
    assert int(env["VLLM_CPU_KVCACHE_SPACE"]) == math.ceil(1.25 * need / 2**30)


def _venv_with_iomp(tmp_path):
    (tmp_path / "venv" / "lib").mkdir(parents=True)
    (tmp_path / "venv" / "lib" / "libiomp5.so").write_bytes(b"")
    return tmp_path / "venv"


def test_the_tuned_mode_reruns_with_intels_openmp_runtime_ahead_of_other_preloads(vllm_offline, tmp_path):
    venv = _venv_with_iomp(tmp_path)
    env = vllm_offline.preload_env("inproc", str(venv), {"LD_PRELOAD": "/opt/other.so", "KEEP": "1"})
    assert env == {"LD_PRELOAD": f"{venv / 'lib' / 'libiomp5.so'}:/opt/other.so", "KEEP": "1"}
    # the re-run finds it preloaded and goes on instead of re-running again
    assert vllm_offline.preload_env("inproc", str(venv), env) is None


def test_vllm_as_shipped_and_a_venv_without_the_library_get_no_preload(vllm_offline, tmp_path):
    assert vllm_offline.preload_env("mp", str(_venv_with_iomp(tmp_path)), {}) is None
    assert vllm_offline.preload_env("inproc", str(tmp_path / "empty-venv"), {}) is None
