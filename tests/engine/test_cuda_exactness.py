"""On a GPU the engine produces the same greedy tokens as on the CPU for the default model, fp32 on
both (20 chat prompts x 64 tokens). Skips without CUDA; CI never has one, so the run is recorded."""

from __future__ import annotations

import json
import os

import pytest
import torch

from engine.sampling_params import SamplingParams
from tests.engine.conftest import CHAT_PROMPTS, make_engine

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_fp32_greedy_matches_cpu(default_model_dir):
    params = SamplingParams(temperature=0.0, max_tokens=64, min_tokens=64)
    results = {}
    for device in ("cpu", "cuda"):
        engine = make_engine(device=device)
        tok = engine.tokenizer
        prompts = [tok.tokenize_chat([{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
        results[device] = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
        del engine
    same = [a == b for a, b in zip(results["cpu"], results["cuda"], strict=True)]
    record = os.environ.get("TESSERA_RECORD_DIR")
    if record:
        with open(os.path.join(record, "cuda_exactness.json"), "w") as fh:
            json.dump({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                       "prompts": len(same), "identical": sum(same), "tokens_per_prompt": 64,
                       "cpu": results["cpu"], "cuda": results["cuda"]}, fh)
    assert all(same), f"{same.count(False)} of {len(same)} prompts differ between CUDA and CPU"
