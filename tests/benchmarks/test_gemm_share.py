from __future__ import annotations

from benchmarks.gemm_share import StepRows, gemm_seconds
from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine


def test_step_rows_follow_the_schedule_and_are_timed():
    eng = make_engine("synthetic:tiny")
    rows = StepRows()
    rows.attach(eng.runner)
    params = SamplingParams(temperature=0.0, max_tokens=4, min_tokens=4, ignore_eos=True)
    for i in range(2):
        eng.add_request(f"r{i}", list(range(100 + i, 108 + i)), params)
    while eng.has_unfinished_requests():
        eng.step()
    # one step prefills both 8-token prompts (the last row of each is sampled and kept), then three
    # decode steps of two rows each produce the remaining tokens
    assert rows.steps == [(16, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    out = gemm_seconds(eng.runner.model, rows.steps, passes=1, progress=False)
    assert out["steps"] == 4 and out["distinct_shapes"] == 5  # q@16, q@2, rest@16, rest@2, head@2
    assert out["layers_s"] > 0 and out["lm_head_s"] > 0
    assert out["gemm_s"] == out["layers_s"] + out["lm_head_s"]
