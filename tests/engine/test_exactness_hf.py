"""Criterion: greedy fp32 output on CPU is token-identical to HF transformers' greedy generate on the
same converted weights (20 chat prompts x 64 tokens)."""

from __future__ import annotations

import pytest
import torch

from engine.sampling_params import SamplingParams
from tests.engine.conftest import CHAT_PROMPTS

NEW_TOKENS = 64


@pytest.fixture(scope="module")
def hf_model(default_model_dir):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(default_model_dir), torch_dtype=torch.float32)
    model.eval()
    return model


def test_greedy_matches_hf_generate(default_engine, hf_model):
    tok = default_engine.tokenizer
    prompts = [tok.tokenize_chat([{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
    # min_tokens bans EOS like HF min_new_tokens does, so both continue past the answer identically
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    ours = default_engine.generate(prompts, params)
    mismatches = []
    for prompt, out in zip(prompts, ours, strict=True):
        with torch.inference_mode():
            ref = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS,
                                    min_new_tokens=NEW_TOKENS, attention_mask=torch.ones(1, len(prompt),
                                    dtype=torch.long), pad_token_id=tok.pad_token_id or 0)
        expected = ref[0, len(prompt):].tolist()
        got = out.outputs[0].token_ids
        assert len(got) == NEW_TOKENS
        if got != expected:
            first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
            mismatches.append((tok.decode(prompt)[-40:], first))
    assert not mismatches, f"greedy output differs from HF at (prompt tail, first index): {mismatches}"


def test_decode_steps_read_the_default_models_projections_from_their_exact_4bit_code(default_engine):
    """The default model was dequantized from Q4_1, so on x86 with AVX-512 every projection is also held
    in its exact 4-bit code, which decode steps of up to CODE_ROWS rows read: the greedy comparison above
    (20 prompts, decode steps of 20 rows) then runs through that path."""
    from engine.kernels import cpu_linear

    if not cpu_linear.panel_available():
        pytest.skip("the AVX-512 panel kernels cannot be built here")
    linears = [m for m in default_engine.runner.model.modules()
               if isinstance(m, (cpu_linear.PanelLinear, cpu_linear.GatedPanelLinear))]
    assert len(linears) == 4 * default_engine.runner.model.arch.num_layers + 1  # + the tied lm_head
    coded = [m for m in linears if m.code is not None]
    assert len(coded) == len(linears) - 1, "a projection of the default model is not held in its code"
    assert len(CHAT_PROMPTS) <= cpu_linear.CODE_ROWS
