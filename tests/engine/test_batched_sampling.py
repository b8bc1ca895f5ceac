"""Batched (GPU) sampling: the row-wise filter equals the per-request filter_logits for every mix of
top-k / top-p / min-p, draws stay inside each row's kept set, and the Sampler on CUDA takes this path
for unseeded rows while seeded and greedy rows keep theirs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from engine.batched_sampling import filter_logits_batched, sample_batched
from engine.request import Request
from engine.sampler import Sampler, filter_logits
from engine.sampling_params import SamplingParams

SETTINGS = [(0, 1.0, 0.0), (5, 1.0, 0.0), (0, 0.8, 0.0), (0, 1.0, 0.1), (7, 0.5, 0.05), (-1, 0.95, 0.0),
            (200, 1.0, 0.0), (1, 1.0, 0.0)]


def test_filter_matches_per_row_filter():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(len(SETTINGS), 100, generator=g)
    top_k = torch.tensor([s[0] for s in SETTINGS])
    top_p = torch.tensor([s[1] for s in SETTINGS])
    min_p = torch.tensor([s[2] for s in SETTINGS])
    got = filter_logits_batched(logits, top_k, top_p, min_p)
    for i, (k, p, m) in enumerate(SETTINGS):
        want = filter_logits(logits[i], k, p, m)
        assert torch.equal(torch.isinf(got[i]), torch.isinf(want)), SETTINGS[i]
        assert torch.equal(got[i][~torch.isinf(got[i])], want[~torch.isinf(want)])


def test_draws_stay_in_each_rows_kept_set():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 50, generator=g)
    params = [SamplingParams(temperature=1.0, top_k=3), SamplingParams(temperature=0.7, top_k=1),
              SamplingParams(temperature=1.5, min_p=0.5)]
    probs2 = (logits[2] / 1.5).softmax(-1)  # min-p applies after the temperature
    kept = [set(torch.topk(logits[0], 3).indices.tolist()), {int(logits[1].argmax())},
            {i for i, v in enumerate(probs2.tolist()) if v >= 0.5 * float(probs2.max())}]
    seen = [Counter() for _ in range(3)]
    for _ in range(300):
        for row, tok in enumerate(sample_batched(logits, params).tolist()):
            seen[row][tok] += 1
    for row in range(3):
        assert set(seen[row]) <= kept[row]
    assert len(seen[0]) == 3  # every kept token of the top-3 row is drawn at some point


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampler_on_cuda_mixes_batched_seeded_and_greedy_rows():
    logits = torch.randn(4, 64, device="cuda")
    reqs = []
    for i, p in enumerate([SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=0.0),
                           SamplingParams(temperature=1.0, top_k=2, seed=5), SamplingParams(temperature=1.0, top_k=2)]):
        r = Request(f"r{i}", f"r{i}", 0, [1, 2], p)
        if p.seed is not None:
            r.generator = torch.Generator(device="cuda").manual_seed(p.seed)
        reqs.append(r)
    out = Sampler(64)(logits, reqs)
    assert out[1][0] == int(logits[1].argmax())
    for row in (0, 2, 3):
        assert out[row][0] in set(torch.topk(logits[row], 2).indices.tolist())
    # the seeded row follows its own generator: the same seed gives the same token again
    reqs[2].generator = torch.Generator(device="cuda").manual_seed(5)
    assert Sampler(64)(logits, reqs)[2][0] == out[2][0]
