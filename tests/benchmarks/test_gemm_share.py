from __future__ import annotations

from benchmarks.gemm_share import StepRows, gemm_seconds
from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine


def test_step_rows_follow_the_schedule_and_are_timed():
    eng = make_engine("synthetic:tiny")
    rows = StepRows()
    rows.attach(eng.runner)
    # one greedy request (its rows take the greedy head, not the fp32 LM head) and one with logprobs
    for i, logprobs in enumerate((None, 0)):
        params = SamplingParams(temperature=0.0, max_tokens=4, min_tokens=4, ignore_eos=True, logprobs=logprobs)
        eng.add_request(f"r{i}", list(range(100 + i, 108 + i)), params)
    while eng.has_unfinished_requests():
        eng.step()
    # one step prefills both 8-token prompts (the last row of each is sampled and kept), then three
    # decode steps of two rows each produce the remaining tokens; one sampled row per step needs logits
    assert rows.steps == [(16, 2, 1), (2, 2, 1), (2, 2, 1), (2, 2, 1)]
    assert rows.greedy_rows == 4
    out = gemm_seconds(eng.runner.model, rows.steps, passes=1, progress=False)
    assert out["steps"] == 4 and out["distinct_shapes"] == 5  # q@16, q@2, rest@16, rest@2, head@1
    assert out["layers_s"] > 0 and out["lm_head_s"] > 0
    assert out["gemm_s"] == out["layers_s"] + out["lm_head_s"]
