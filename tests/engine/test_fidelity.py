"""The fidelity evaluator: KL / top-1 computed as defined, identical engines score perfectly, and the
calibration and held-out texts never share a topic."""

from __future__ import annotations

import math

import pytest
import torch

from engine.calibration_text import split_of, texts, token_windows
from engine.fidelity import (
    FidelityData,
    FidelityEvaluator,
    common_prefix,
    compare_logprobs,
    kv_cache_figures,
)
from tests.engine.conftest import make_engine


def test_compare_logprobs_matches_the_definition():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2]])
    kl, top1, n = compare_logprobs([p.log()], [q.log()])
    by_hand = [sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr, strict=True)) for pr, qr in zip(p.tolist(), q.tolist(), strict=True)]
    assert n == 2
    assert kl == pytest.approx(sum(by_hand) / 2, rel=1e-5)
    assert top1 == 0.5  # row 0 agrees (index 0), row 1 does not (2 vs 0)
    kl_same, top1_same, _ = compare_logprobs([p.log()], [p.log()])
    assert kl_same == pytest.approx(0.0, abs=1e-7) and top1_same == 1.0
    with pytest.raises(ValueError):
        compare_logprobs([p.log()], [q[:1].log()])


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_splits_are_disjoint_and_nonempty(default_model_dir):
    cal = {t for t, _ in texts("calibration")}
    held = {t for t, _ in texts("heldout")}
    assert cal and held and not cal & held
    assert all(split_of(t) == "calibration" for t in cal)
    from engine.loader.model_registry import resolve_model
    from engine.loader.tokenizer import Tokenizer

    tok = Tokenizer(resolve_model("smollm2-135m-instruct").tokenizer_dir)
    w = token_windows(tok, "heldout", 3, 100)
    assert len(w) == 3 and all(len(x) == 100 for x in w) and len({tuple(x) for x in w}) == 3
    with pytest.raises(ValueError):
        token_windows(tok, "heldout", 1000, 100)
    with pytest.raises(ValueError):
        texts("train")


def test_identical_engines_score_perfectly_and_a_quantized_one_does_not():
    seqs = [[(11 * i + 5 * j) % 30000 + 3 for j in range(48)] for i in range(3)]
    data = FidelityData(seqs, [s[:16] for s in seqs], continuation_tokens=8)
    ref = make_engine("synthetic:tiny", prefix_caching=False)
    ev = FidelityEvaluator(ref, data)
    same = ev.evaluate(make_engine("synthetic:tiny", prefix_caching=False))
    assert same.kl_mean == pytest.approx(0.0, abs=1e-6)
    assert same.top1_agreement == 1.0 and same.match_len_mean == 8.0 and same.num_positions == 3 * 47
    quant = make_engine("synthetic:tiny", prefix_caching=False,
                        plugins=(("kv_mixed_precision", {"preset": "kv2", "mode": "per_token", "group_size": 16}),))
    worse = ev.evaluate(quant)
    assert worse.kl_mean > 1e-4
    figs, base = kv_cache_figures(quant), kv_cache_figures(ref)
    assert figs["kv_bits_mean"] == 2.0 and base["kv_bits_mean"] == 16.0
    assert figs["kv_bytes_per_token"] < base["kv_bytes_per_token"] / 4


def test_bad_data_is_rejected():
    with pytest.raises(ValueError):
        FidelityData([[1]], [])
    with pytest.raises(ValueError):
        FidelityData([[1, 2]], [[]])
