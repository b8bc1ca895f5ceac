"""Lossless sampling preserves the target distribution. First the rejection sampler alone, on explicit
distributions, over many samples; then end to end through the engine on a tiny random model with a
layer-skipping self-draft (whose distribution differs from the target's), against the target's exact
next-token distribution. Chi-square tests at alpha = 0.001 must not reject; the same test must reject
the raw draft distribution, which shows it has the power to notice a wrong sampler."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from engine.sampler import filter_logits
from engine.sampling_params import SamplingParams
from plugins.spec_decode.verifiers.lossless import rejection_sample
from tests.engine.conftest import make_engine

ALPHA = 1e-3


def chi_square_pvalue(counts: dict[int, int], probs: dict[int, float]) -> float:
    """Pearson's test of observed counts against expected probabilities (cells with tiny expectation
    merged into one)."""
    n = sum(counts.values())
    support = set(probs) | set(counts)
    big = [t for t in support if probs.get(t, 0.0) * n >= 5]
    small = [t for t in support if t not in big]
    obs = [counts.get(t, 0) for t in big]
    exp = [probs[t] * n for t in big]
    if small:
        obs.append(sum(counts.get(t, 0) for t in small))
        exp.append(max(sum(probs.get(t, 0.0) for t in small) * n, 1e-9))
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
    df = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_rejection_sampler_keeps_target_distribution():
    g = torch.Generator().manual_seed(0)
    vocab, k, samples = 6, 2, 20000
    p = torch.softmax(torch.randn(k, vocab, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(k, vocab, generator=g) * 1.5, -1)
    first: Counter = Counter()
    raw: Counter = Counter()
    for _ in range(samples):
        drafts = torch.multinomial(q, 1, generator=g).squeeze(-1).tolist()
        verdict = rejection_sample(p, q, drafts, g)
        token = drafts[0] if verdict.num_accepted >= 1 else verdict.next_token
        first[token] += 1
        raw[drafts[0]] += 1
    target = dict(enumerate(p[0].tolist()))
    assert chi_square_pvalue(first, target) > ALPHA
    assert chi_square_pvalue(raw, target) < ALPHA  # the drafts alone are visibly off


@pytest.fixture(scope="module")
def engines():
    plain = make_engine("synthetic:tiny")
    spec = make_engine("synthetic:tiny", plugins=(("spec_decode", {
        "proposer": "draft", "draft_layers": "0", "k": 2, "adaptive_k": False, "max_batch_size": 64,
        "min_gain": 0.0}),))
    return plain, spec


def _exact(plain, prefix: list[int], top_k: int) -> dict[int, float]:
    """The target's sampling distribution after `prefix` (temperature 1, top-k)."""
    params = SamplingParams(temperature=0.0, max_tokens=1, extra={"return_logits": True})
    out = plain.generate([prefix], params)[0]
    row = filter_logits(out.logits[-1].float(), top_k, 1.0, 0.0)
    probs = torch.softmax(row, -1)
    nz = torch.nonzero(probs).squeeze(-1).tolist()
    return {t: float(probs[t]) for t in nz}


def test_engine_sampling_with_model_drafts_keeps_target_distribution(engines):
    plain, spec = engines
    top_k = 4
    prompt = [5, 17, 300, 42, 7]
    params = SamplingParams(n=50, temperature=1.0, top_k=top_k, max_tokens=3, ignore_eos=True, seed=1)
    seqs = []
    for r in range(24):
        spec.add_request(f"chi{r}", prompt, SamplingParams(**{**params.__dict__, "seed": 1000 * r}))
    while spec.has_unfinished_requests():
        for out in spec.step():
            if out.finished:
                seqs.extend(o.token_ids for o in out.outputs)
    m = spec.plugins[0].metrics
    assert m.drafts > 0 and 0 < m.accepted_tokens < m.draft_tokens  # both branches were exercised
    # second token (first draft position) given the most common first token
    t1 = Counter(s[0] for s in seqs).most_common(1)[0][0]
    second = Counter(s[1] for s in seqs if s[0] == t1)
    assert sum(second.values()) > 60
    assert chi_square_pvalue(second, _exact(plain, prompt + [t1], top_k)) > ALPHA
    # third token (second draft position) given the most common first two
    t12 = Counter((s[0], s[1]) for s in seqs).most_common(1)[0][0]
    third = Counter(s[2] for s in seqs if (s[0], s[1]) == t12)
    assert sum(third.values()) > 30
    assert chi_square_pvalue(third, _exact(plain, prompt + list(t12), top_k)) > ALPHA
