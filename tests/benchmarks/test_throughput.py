"""`tessera bench throughput` on tiny workloads: JSON shape, positive numbers, the PNG, and the pieces
(backend selection, matmul ceiling) on their own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from benchmarks import matmul_ceiling, throughput
from server.cli import main

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
TINY = ["--input-len", "8", "--output-len", "4", "--concurrency", "2", "--no-progress"]


def _check_block(block: dict, backends: list[str]) -> None:
    assert set(block["backends"]) == set(backends)
    for b in backends:
        entry = block["backends"][b]
        assert set(entry) == {"output_tok_s", "total_tok_s", "elapsed_s"}
        assert all(v > 0 for v in entry.values()), entry
        assert entry["total_tok_s"] > entry["output_tok_s"]  # input tokens count in the total
    assert set(block["ratios"]) == {"native/vllm", "native/vllm_inproc", "native/hf"}
    assert block["matmul_ceiling_tok_s"] > 0
    assert block["matmul_ceiling_tok_s"] == max(block["matmul_ceiling_by_gemm"].values())


def test_native_and_hf_shape(tmp_path):
    pytest.importorskip("engine.llm_engine")
    pytest.importorskip("transformers")
    out = tmp_path / "tp.json"
    rc = main(["bench", "throughput", "--model", "synthetic:tiny", *TINY, "--backends", "native,hf",
               "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data) >= {"workload", "results", "backends", "ratios", "machine"}
    assert list(data["results"]) == ["c2"]
    block = data["results"]["c2"]
    _check_block(block, ["native", "hf"])
    assert block["ratios"]["native/hf"] > 0
    assert block["ratios"]["native/vllm"] is None and block["ratios"]["native/vllm_inproc"] is None
    assert block["native_frac_of_ceiling"] > 0
    assert data["backends"] == block["backends"] and data["ratios"] == block["ratios"]
    assert data["workload"]["input_len"] == 8 and data["workload"]["output_len"] == 4
    native = data["details"]["c2"]["native"]
    assert native["output_tokens"] == 2 * 4
    assert native["gemm"]["steps"] == 4  # the timed run only: one prefill step, three decode steps
    # every row is greedy: its token came from the greedy head, so no fp32 LM head time is counted
    assert native["gemm"]["greedy_rows"] == 2 * 4
    assert native["gemm"]["lm_head_s"] == 0 < native["gemm"]["gemm_s"]
    assert block["native_gemm_s"] == native["gemm"]["gemm_s"] and block["native_gemm_share"] > 0
    assert data["details"]["c2"]["hf"]["output_tokens"] == 2 * 4
    assert out.with_suffix(".png").stat().st_size > 0


def test_repeats_take_turns_and_report_each_backends_median_run(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "tp.json"
    rc = main(["bench", "throughput", "--model", "synthetic:tiny", *TINY, "--backends", "native,hf",
               "--repeats", "3", "--json", str(out)])
    assert rc == 0
    order = [line.split("backend=")[1].split(":")[0] for line in capsys.readouterr().err.splitlines()
             if "backend=" in line]
    assert order == ["native", "hf"] * 3
    data = json.loads(out.read_text())
    for backend in ("native", "hf"):
        runs = data["details"]["c2"][backend]["runs_output_tok_s"]
        assert len(runs) == 3
        assert data["results"]["c2"]["backends"][backend]["output_tok_s"] == sorted(runs)[1]
        # each timed run says how much of the machine's CPU a hypervisor took meanwhile
        shares = data["details"]["c2"][backend]["runs_cpu_steal_share"]
        assert len(shares) == 3
        if sys.platform.startswith("linux"):
            assert all(0.0 <= share <= 1.0 for share in shares), shares
    assert data["workload"]["repeats"] == 3
    assert main(["bench", "throughput", "--model", "synthetic:tiny", *TINY, "--backends", "native",
                 "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err


def test_explicit_vllm_without_venv_fails_clearly(tmp_path, capsys):
    rc = main(["bench", "throughput", "--model", "synthetic:tiny", *TINY, "--backends", "vllm",
               "--vllm-python", str(tmp_path / "missing" / "python"), "--json", str(tmp_path / "x.json")])
    assert rc != 0
    assert "make bench-vllm-setup" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_default_backends_skip_missing_vllm(tmp_path, capsys):
    args = argparse.Namespace(backends=None, vllm_python=str(tmp_path / "missing"))
    backends = throughput.prepare_backends(args)
    assert backends == ["native", "hf"]
    err = capsys.readouterr().err
    assert "skipping vllm, vllm_inproc" in err and "make bench-vllm-setup" in err


def test_unknown_backend_is_a_user_error(tmp_path):
    assert main(["bench", "throughput", "--backends", "native,tgi", "--json", str(tmp_path / "x.json")]) == 2


def test_matmul_ceiling_on_synthetic_weights():
    import torch

    from engine.loader.model_registry import resolve_model

    resolved = resolve_model("synthetic:tiny", progress=False)
    weights = matmul_ceiling.linear_weights(resolved, "float32", torch.device("cpu"))
    arch = resolved.arch
    assert len(weights) == 7 * arch.num_layers + 1
    assert weights[-1].shape == (arch.vocab_size, arch.hidden_size)
    for linears in (None, matmul_ceiling.engine_linears(weights)):
        ceil = matmul_ceiling.matmul_ceiling(weights, batch=4, min_time_s=0.05, linears=linears)
        assert ceil["tok_s"] > 0 and ceil["time_per_step_s"] > 0
        assert ceil["tok_s"] == pytest.approx(4 / ceil["time_per_step_s"])


def test_linear_weights_of_a_real_checkpoint(default_model_dir):
    import torch

    from engine.loader.model_registry import resolve_model

    resolved = resolve_model(str(default_model_dir), progress=False)
    weights = matmul_ceiling.linear_weights(resolved, "float32", torch.device("cpu"))
    arch = resolved.arch
    assert len(weights) == 7 * arch.num_layers + 1  # tied lm_head = the embedding
    assert weights[-1].shape == (arch.vocab_size, arch.hidden_size)
    total = sum(w.numel() for w in weights)
    assert total == arch.num_params - arch.num_layers * 2 * arch.hidden_size - arch.hidden_size


def test_greedy_match():
    assert throughput.greedy_match([[1, 2, 3, 4]], [[1, 2, 9, 4]]) == 0.5
    assert throughput.greedy_match([[1, 2], [3, 4]], [[1, 2], [3, 4]]) == 1.0
    assert throughput.greedy_match([], []) is None


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason="no .venv-vllm (make bench-vllm-setup)")
def test_vllm_baseline(tmp_path, default_model_dir):
    # synthetic:tiny's head_dim (16) is below what vLLM's CPU attention supports: use the real model.
    out = tmp_path / "tp.json"
    rc = main(["bench", "throughput", "--model", "smollm2-135m-instruct", *TINY, "--backends", "vllm,vllm_inproc",
               "--vllm-eager", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    _check_block(data["results"]["c2"], ["vllm", "vllm_inproc"])
    for backend, mode in (("vllm", "mp"), ("vllm_inproc", "inproc")):
        assert data["details"]["c2"][backend]["output_tokens"] == 2 * 4
        assert data["details"]["c2"][backend]["settings"]["cpu_mode"] == mode
    # the tuned run re-ran itself with Intel's OpenMP runtime from the venv preloaded, as shipped did not
    iomp = VLLM_PYTHON.parent.parent / "lib" / "libiomp5.so"
    if iomp.is_file():
        assert str(iomp) in data["details"]["c2"]["vllm_inproc"]["settings"]["LD_PRELOAD"].split(":")
        assert str(iomp) not in data["details"]["c2"]["vllm"]["settings"].get("LD_PRELOAD", "")

