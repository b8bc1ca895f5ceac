"""Sampler: greedy, temperature / top-k / top-p / min-p, seeds, penalties, min_tokens, logprobs.
Expected values are computed here from the OpenAI / Hugging Face definitions."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from engine.request import Request
from engine.sampler import Sampler, apply_penalties, draw, filter_logits
from engine.sampling_params import SamplingParams

V = 32


def _req(params: SamplingParams, prompt=(1, 2, 3), output=(), eos=(), seed: int | None = None) -> Request:
    r = Request("r", "r", 0, list(prompt), params, eos_token_ids=tuple(eos))
    r.output_token_ids = list(output)
    if seed is not None:
        r.generator = torch.Generator().manual_seed(seed)
    return r


def _logits_of(probs: list[float], vocab: int = V) -> torch.Tensor:
    """Logits whose softmax is `probs` on the first ids and ~0 on the rest of the vocabulary."""
    row = torch.full((vocab,), -1e9)
    row[: len(probs)] = torch.log(torch.tensor(probs, dtype=torch.float64)).float()
    return row


def _draw(sampler: Sampler, logits: torch.Tensor, params: SamplingParams, n: int, seed: int = 0) -> Counter:
    req = _req(params, seed=seed)
    counts = Counter()
    for _ in range(n):
        ((tok, _),) = sampler(logits.unsqueeze(0), [req])
        counts[tok] += 1
    return counts


def test_greedy_is_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, V, generator=g)
    reqs = [_req(SamplingParams(temperature=0.0)) for _ in range(6)]
    out = Sampler(V)(logits, reqs)
    assert [t for t, _ in out] == [int(torch.argmax(row)) for row in logits]
    assert all(lp is None for _, lp in out)


def test_greedy_rows_in_a_mixed_batch_stay_argmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, V, generator=g)
    reqs = [_req(SamplingParams(temperature=0.0 if i % 2 == 0 else 1.0), seed=i) for i in range(5)]
    out = Sampler(V)(logits, reqs)
    for i in (0, 2, 4):
        assert out[i][0] == int(torch.argmax(logits[i]))
    for _, (t, _) in enumerate(out):
        assert 0 <= t < V


def test_top_k_1_equals_greedy_under_temperature():
    g = torch.Generator().manual_seed(2)
    sampler = Sampler(V)
    for trial in range(20):
        logits = torch.randn(1, V, generator=g) * 0.5  # flat-ish: plain sampling would often differ
        req = _req(SamplingParams(temperature=1.5, top_k=1), seed=trial)
        ((tok, _),) = sampler(logits, [req])
        assert tok == int(torch.argmax(logits[0]))


def test_top_k_keeps_exactly_the_k_best():
    logits = _logits_of([0.1, 0.3, 0.05, 0.25, 0.2, 0.1])
    kept = torch.isfinite(filter_logits(logits, 3, 1.0, 0.0)).nonzero().flatten().tolist()
    assert sorted(kept) == [1, 3, 4]
    counts = _draw(Sampler(V), logits, SamplingParams(temperature=1.0, top_k=3), 600)
    assert set(counts) == {1, 3, 4}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = [0.05, 0.5, 0.15, 0.3]  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    logits = _logits_of(probs)
    for top_p, expected in [(0.4, {1}), (0.75, {1, 3}), (0.9, {1, 3, 2}), (0.99, {0, 1, 2, 3})]:
        filtered = filter_logits(logits.clone(), 0, top_p, 0.0)
        kept = set(torch.isfinite(filtered).nonzero().flatten().tolist())
        assert kept == expected, top_p
        # kept tokens keep their relative probabilities
        renorm = torch.softmax(filtered, -1)
        mass = sum(probs[i] for i in expected)
        for i in expected:
            assert renorm[i].item() == pytest.approx(probs[i] / mass, rel=1e-4)


def test_top_p_sampling_frequencies():
    logits = _logits_of([0.05, 0.5, 0.15, 0.3])
    n = 2000
    counts = _draw(Sampler(V), logits, SamplingParams(temperature=1.0, top_p=0.75), n, seed=3)
    assert set(counts) == {1, 3}
    # 0.5 / 0.8 = 0.625; binomial sd ~ 0.011
    assert counts[1] / n == pytest.approx(0.625, abs=0.05)


def test_top_p_applies_after_temperature():
    # at temperature 0.25 the distribution sharpens: p ~ (0.5^4, 0.3^4, ...) normalised -> top token ~ 0.88
    probs = [0.5, 0.3, 0.15, 0.05]
    logits = _logits_of(probs)
    t = 0.25
    sharp = [p ** (1 / t) for p in probs]
    sharp = [p / sum(sharp) for p in sharp]
    assert sharp[0] > 0.8
    filtered = filter_logits(logits / t, 0, 0.8, 0.0)
    assert set(torch.isfinite(filtered).nonzero().flatten().tolist()) == {0}
    counts = _draw(Sampler(V), logits, SamplingParams(temperature=t, top_p=0.8), 200)
    assert set(counts) == {0}


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability():
    probs = [0.5, 0.3, 0.12, 0.08]
    logits = _logits_of(probs)
    # threshold 0.2 * 0.5 = 0.1: 0.12 stays, 0.08 goes
    kept = set(torch.isfinite(filter_logits(logits, 0, 1.0, 0.2)).nonzero().flatten().tolist())
    assert kept == {0, 1, 2}
    kept = set(torch.isfinite(filter_logits(logits, 0, 1.0, 0.7)).nonzero().flatten().tolist())
    assert kept == {0}  # 0.7 * 0.5 = 0.35 > 0.3
    counts = _draw(Sampler(V), logits, SamplingParams(temperature=1.0, min_p=0.2), 1500, seed=4)
    assert set(counts) == {0, 1, 2}


def test_a_seed_makes_sampling_reproducible():
    logits = torch.zeros(1, V)  # uniform: every draw is pure RNG
    sampler = Sampler(V)

    def run(seed):
        req = _req(SamplingParams(temperature=1.0, seed=seed), seed=seed)
        return [sampler(logits, [req])[0][0] for _ in range(24)]

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c
    assert len(set(a)) > 1


def test_seeded_rows_do_not_depend_on_their_batch_neighbours():
    logits = torch.zeros(3, V)
    sampler = Sampler(V)
    alone = _req(SamplingParams(temperature=1.0), seed=11)
    solo = [sampler(logits[:1], [alone])[0][0] for _ in range(10)]
    seeded = _req(SamplingParams(temperature=1.0), seed=11)
    others = [_req(SamplingParams(temperature=1.0), seed=s) for s in (1, 2)]
    batched = [sampler(logits, [others[0], seeded, others[1]])[1][0] for _ in range(10)]
    assert batched == solo


def test_repetition_penalty_follows_hf():
    # HF RepetitionPenaltyLogitsProcessor: for every token already in the sequence (prompt + output),
    # score / penalty when the score is positive, score * penalty when it is negative
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 4.0, 1.0, 0.0, -0.5])
    params = SamplingParams(repetition_penalty=2.0)
    req = _req(params, prompt=[0, 1, 1], output=[3, 6, 0])
    out = logits.clone()
    apply_penalties(out, req)
    seen = {0, 1, 3, 6}
    expected = [(x / 2.0 if x > 0 else x * 2.0) if i in seen else x for i, x in enumerate(logits.tolist())]
    assert out.tolist() == pytest.approx(expected)


def test_frequency_and_presence_penalties_follow_openai():
    # OpenAI: mu[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty, where c[j] counts
    # how often j was generated so far (prompt tokens do not count)
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=1.25)
    output = [2, 2, 2, 4, 5, 2]
    req = _req(params, prompt=[0, 1, 0], output=output)
    out = logits.clone()
    apply_penalties(out, req)
    counts = Counter(output)
    expected = [x - counts[j] * 0.5 - (1.25 if counts[j] else 0.0) for j, x in enumerate(logits.tolist())]
    assert out.tolist() == pytest.approx(expected)
    assert out[0].item() == 1.0 and out[1].item() == 2.0, "prompt tokens are not penalised"


def test_negative_penalties_encourage_repetition():
    logits = torch.tensor([1.0, 1.0, 1.0])
    req = _req(SamplingParams(frequency_penalty=-1.0, presence_penalty=-0.5), prompt=[0], output=[1, 1])
    apply_penalties(logits, req)
    assert logits.tolist() == pytest.approx([1.0, 1.0 + 2.0 + 0.5, 1.0])


def test_all_penalties_together():
    logits = torch.tensor([3.0, -2.0, 1.0, 0.5])
    params = SamplingParams(repetition_penalty=1.5, frequency_penalty=0.25, presence_penalty=0.1)
    req = _req(params, prompt=[3], output=[1, 1, 2])
    apply_penalties(logits, req)
    # repetition first (tokens 1, 2, 3 seen), then frequency/presence over the output
    rep = [3.0, -2.0 * 1.5, 1.0 / 1.5, 0.5 / 1.5]
    counts = Counter([1, 1, 2])
    expected = [rep[j] - 0.25 * counts[j] - (0.1 if counts[j] else 0.0) for j in range(4)]
    assert logits.tolist() == pytest.approx(expected)


def test_penalties_change_the_greedy_choice_but_not_the_raw_logprobs():
    logits = torch.tensor([[5.0, 4.5, 0.0, 0.0]])
    params = SamplingParams(temperature=0.0, presence_penalty=1.0, logprobs=2)
    req = _req(params, prompt=[2], output=[0])
    original = logits.clone()
    ((tok, lp),) = Sampler(4)(logits, [req])
    assert tok == 1  # 5.0 - 1.0 < 4.5
    assert torch.equal(logits, original), "the caller's logits must not be modified"
    raw = torch.log_softmax(original[0].double(), -1)
    assert lp.logprob == pytest.approx(raw[1].item(), abs=1e-5)
    assert lp.top[0][0] == 0, "logprobs describe the raw distribution, before penalties"


def test_a_penalized_request_in_a_batch_changes_only_its_own_row():
    # rows 0 and 2 prefer token 0, which row 0 already produced; only row 0 has a presence penalty
    logits = torch.zeros(4, V)
    logits[:, 0] = 5.0
    logits[:, 1] = 4.5
    original = logits.clone()
    reqs = [_req(SamplingParams(temperature=0.0, presence_penalty=1.0), output=[0]),
            _req(SamplingParams(temperature=0.0), output=[0]),
            _req(SamplingParams(temperature=0.7, presence_penalty=1.0), output=[0], seed=3),
            _req(SamplingParams(temperature=0.0, min_tokens=2, ignore_eos=True), output=[0], eos=(0,))]
    out = Sampler(V)(logits, reqs)
    assert [tok for tok, _ in out][:2] == [1, 0]
    assert out[3][0] == 0, "min_tokens with ignore_eos bans nothing"
    assert torch.equal(logits, original), "the caller's logits must not be modified"
    # each row's token is the one it gets when sampled alone
    for i, req in enumerate(reqs):
        if req.generator is not None:
            req.generator.manual_seed(3)
        ((alone, _),) = Sampler(V)(original[i:i + 1].clone(), [req])
        assert alone == out[i][0]


def test_min_tokens_bans_eos_and_stop_token_ids():
    eos, stop = 5, 9
    logits = torch.zeros(1, V)
    logits[0, eos] = 10.0
    logits[0, stop] = 9.0
    logits[0, 3] = 8.0
    sampler = Sampler(V)
    params = SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=(stop,))
    req = _req(params, output=[1, 1], eos=(eos,))
    ((tok, _),) = sampler(logits, [req])
    assert tok == 3
    # sampled too: the banned ids can never come out
    sparams = SamplingParams(temperature=1.0, min_tokens=3, stop_token_ids=(stop,))
    sreq = _req(sparams, output=[1], eos=(eos,), seed=5)
    for _ in range(50):
        ((tok, _),) = sampler(logits, [sreq])
        assert tok not in (eos, stop)
    # once min_tokens outputs exist, EOS is allowed again
    req.output_token_ids.append(1)
    ((tok, _),) = sampler(logits, [req])
    assert tok == eos


def test_min_tokens_with_ignore_eos_only_bans_stop_token_ids():
    eos, stop = 5, 9
    logits = torch.zeros(1, V)
    logits[0, stop] = 10.0
    logits[0, eos] = 9.0
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(stop,), ignore_eos=True)
    ((tok, _),) = Sampler(V)(logits, [_req(params, eos=(eos,))])
    assert tok == eos


def test_banned_token_ids_follow_min_tokens_eos_and_stop_ids():
    eos, stop = 5, 9
    assert _req(SamplingParams(min_tokens=2, stop_token_ids=(stop,)), eos=(eos,)).banned_token_ids == (eos, stop)
    assert _req(SamplingParams(min_tokens=2, stop_token_ids=(stop,), ignore_eos=True),
                eos=(eos,)).banned_token_ids == (stop,)
    # ignore_eos and no stop ids: min_tokens bans nothing, so the sampler can take the logits as they are
    assert _req(SamplingParams(min_tokens=2, ignore_eos=True), eos=(eos,)).banned_token_ids == ()
    assert _req(SamplingParams(min_tokens=2), output=[1, 1], eos=(eos,)).banned_token_ids == ()


def test_logprobs_are_log_softmax_of_raw_logits_with_sorted_alternatives():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(3, V, generator=g) * 3
    reqs = [
        _req(SamplingParams(temperature=0.0, logprobs=5)),
        _req(SamplingParams(temperature=0.0)),  # no logprobs asked
        _req(SamplingParams(temperature=0.7, logprobs=0), seed=1),
    ]
    out = Sampler(V)(logits, reqs)
    for row, (tok, lp) in zip([0, 2], [out[0], out[2]], strict=True):
        x = logits[row].double()
        ref = x - math.log(torch.exp(x - x.max()).sum().item()) - x.max()
        assert lp is not None
        assert lp.token_id == tok
        assert lp.logprob == pytest.approx(ref[tok].item(), abs=1e-4)
    assert out[1][1] is None

    top = out[0][1].top
    assert len(top) == 5
    ref = logits[0].double() - torch.logsumexp(logits[0].double(), -1)
    expected_ids = sorted(range(V), key=lambda j: -ref[j].item())[:5]
    assert [t for t, _ in top] == expected_ids
    assert [v for _, v in top] == pytest.approx([ref[j].item() for j in expected_ids], abs=1e-4)
    assert all(top[i][1] >= top[i + 1][1] for i in range(4))
    assert top[0][0] == out[0][0], "greedy picks the most likely token"
    assert out[2][1].top == []


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs / probs.sum() * counts.sum()
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_draw_follows_unnormalized_weights_and_never_draws_a_zero():
    weights = torch.tensor([0.0, 3.0, 0.0, 1.0, 6.0, 0.0, 0.5, 0.0])
    g = torch.Generator().manual_seed(0)
    ids = draw(weights.expand(20000, -1), g)  # one draw per row
    counts = torch.bincount(ids, minlength=len(weights)).double()
    assert counts[weights == 0].sum() == 0
    # 4 non-zero categories: 3 degrees of freedom, the 0.999 quantile is 16.3
    assert _chi_square(counts, weights.double()) < 16.3


def test_draw_of_one_row_is_a_scalar_and_a_seed_repeats_it():
    weights = torch.rand(49152, generator=torch.Generator().manual_seed(1))
    a = [int(draw(weights, torch.Generator().manual_seed(7))) for _ in range(3)]
    assert draw(weights).shape == ()
    assert len(set(a)) == 1


def test_draw_with_a_uniform_at_the_top_of_its_range_takes_the_last_weighted_token(monkeypatch):
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.ones_like(real_rand(*a, **k)))
    assert int(draw(torch.tensor([0.2, 0.8, 0.0, 0.0]))) == 1


class _Head:
    """A step output over fixed logits that records which rows were asked for greedy tokens and which
    for logits; its greedy tokens are deliberately not the argmax, so a row taking the wrong path
    shows in the result."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits, self.greedy_rows, self.logit_rows = logits, [], []

    def greedy_of(self, rows):
        self.greedy_rows += rows
        return torch.tensor([V - 1 - r for r in rows])

    def logits_of(self, rows):
        self.logit_rows += rows
        return self.logits[torch.tensor(rows)]


def test_sample_asks_for_greedy_tokens_only_where_the_plain_argmax_is_the_answer():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, V, generator=g)

    def requests():
        return [_req(SamplingParams(temperature=0.0)),  # plain greedy
                _req(SamplingParams(temperature=0.0, logprobs=2)),  # needs the logits for its logprobs
                _req(SamplingParams(temperature=0.0, repetition_penalty=1.3)),  # penalties change the logits
                _req(SamplingParams(temperature=0.0, min_tokens=4, max_tokens=8), eos=(3,)),  # EOS banned
                _req(SamplingParams(temperature=0.8), seed=1),  # sampled
                _req(SamplingParams(temperature=0.0, min_tokens=1, max_tokens=8), output=(7,), eos=(3,))]

    rows = [5, 0, 1, 2, 3, 4]  # each request's row among the step's sampled rows
    head = _Head(logits)
    got = Sampler(V).sample(head, rows, requests())
    assert sorted(head.greedy_rows) == [4, 5]  # the plain greedy request and the one past min_tokens
    assert sorted(head.logit_rows) == [0, 1, 2, 3]
    assert [t for t, _ in got][0] == V - 1 - 5 and [t for t, _ in got][5] == V - 1 - 4
    ordered = Sampler(V)(logits[torch.tensor(rows[1:5])], requests()[1:5])
    assert [t for t, _ in got[1:5]] == [t for t, _ in ordered]
    assert got[1][1] is not None and got[0][1] is None
