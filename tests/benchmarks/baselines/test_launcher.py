"""The subprocess launcher of the throughput benchmark's baselines: what it asks each vLLM backend for."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.baselines import launcher


@pytest.mark.parametrize(("kind", "cpu_mode"), [("vllm", "mp"), ("vllm_inproc", "inproc")])
@pytest.mark.parametrize("eager", [False, True])
def test_vllm_baseline_runs_vllms_default_compiled_mode_unless_eager(tmp_path, monkeypatch, eager, kind, cpu_mode):
    # vLLM's default (torch.compile) is the faster of its two modes on CPU, so it is what native is
    # compared against; --vllm-eager is the opt-out
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        result = {"backend": "vllm", "elapsed_s": 1.0, "output_tokens": 4, "input_tokens": 8,
                  "output_tok_s": 4.0, "total_tok_s": 12.0}
        return argparse.Namespace(stdout="TESSERA_RESULT " + json.dumps(result), returncode=0)

    monkeypatch.setattr(launcher.subprocess, "run", fake_run)
    args = argparse.Namespace(vllm_python="python", output_len=4, dtype="float32", seed=0, progress=False,
                              timeout=10, vllm_eager=eager)
    ctx = {"hf_dir": tmp_path, "random_weights": False}
    result, _ = launcher.run_baseline(kind, args, ctx, 2, tmp_path / "p.json", tmp_path)
    assert result["output_tok_s"] == 4.0
    assert ("--eager" in seen[0]) is eager
    # vllm is vLLM as shipped (its own processes and binding), vllm_inproc the small-machine tuning
    assert seen[0][seen[0].index("--cpu-mode") + 1] == cpu_mode
