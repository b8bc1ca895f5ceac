"""The judge rule, the load governor's decisions and the measured step cost."""

from __future__ import annotations

import pytest
import torch

from plugins.spec_decode.governor import Governor
from plugins.spec_decode.step_cost import StepCost
from plugins.spec_decode.verifiers.judge import judge
from plugins.spec_decode.verifiers.target_probs import kl_divergence


def _dist(*vals):
    t = torch.tensor(vals, dtype=torch.float32)
    return t / t.sum()


def test_judge_accepts_by_match_or_by_small_kl_when_target_unsure():
    unsure = _dist(0.5, 0.4, 0.1)
    close = _dist(0.45, 0.45, 0.1)
    sure = _dist(0.95, 0.04, 0.01)
    far = _dist(0.05, 0.05, 0.9)
    p = torch.stack([unsure, unsure, sure])
    q = torch.stack([close, close, far])
    kl = kl_divergence(p, q)
    assert kl[0] < 0.1 < kl[2]
    # position 0 matches; position 1 differs but the target is unsure and KL is small; position 2: the
    # target is sure, so a different draft is rejected and the target's choice is emitted
    verdict, relaxed = judge(p, q, [0, 1, 2], [0, 0, 0], tau=0.1)
    assert verdict.num_accepted == 2 and verdict.next_token == 0
    assert len(relaxed) == 1 and relaxed[0] == pytest.approx(float(kl[1]))
    # tau = 0 is exact matching
    verdict, relaxed = judge(p, q, [0, 1, 2], [0, 0, 0], tau=0.0)
    assert verdict.num_accepted == 1 and verdict.next_token == 0 and not relaxed
    # all accepted: the engine samples the bonus token
    verdict, _ = judge(p, q, [0, 1, 0], [0, 0, 0], tau=0.1)
    assert verdict.num_accepted == 3 and verdict.next_token is None


def test_step_cost_measures_plain_and_draft_time():
    cost = StepCost(ema=1.0, min_plain=1)
    assert cost.estimate(1) is None
    cost.observe(batch_size=1, num_drafts=0, seconds=0.030)
    cost.observe(batch_size=1, num_drafts=5, seconds=0.040)
    per_token, per_draft = cost.estimate(1)
    assert per_token == pytest.approx(0.030)
    assert per_draft == pytest.approx(0.002)
    assert cost.estimate(4) is None  # no plain step at batch 4 yet


def test_governor_switches_off_when_acceptance_does_not_pay():
    gov = Governor(max_batch_size=4, min_gain=1.0, probe_interval=4)
    assert gov.batch_allows(4) and not gov.batch_allows(5)
    assert gov.draft_budget("r", 6, 1) == 6  # no evidence: try
    gov.cost.min_plain = 1
    gov.cost.observe(1, 0, 0.030)
    gov.cost.observe(1, 6, 0.042)  # 2 ms per draft token
    gov.record("r", 6, 6)
    assert gov.draft_budget("r", 6, 1) == 6  # everything accepted: worth it
    for _ in range(20):
        gov.record("r", 6, 0)
    budgets = [gov.draft_budget("r", 6, 1) for _ in range(8)]
    # nothing accepted: off, except a one-token probe every probe_interval steps
    assert budgets.count(0) == 6 and budgets.count(1) == 2
    gov.forget("r")
    assert gov.accept_estimate("r") is None


def test_governor_adapts_k_to_acceptance():
    gov = Governor(max_batch_size=8, min_gain=0.0, probe_interval=4)
    gov.record("r", 6, 1)
    assert gov.draft_budget("r", 6, 1) == 3  # ceil(1.5 * 1) + 1
    fixed = Governor(max_batch_size=8, min_gain=0.0, probe_interval=4, adaptive_k=False)
    fixed.record("r", 6, 1)
    assert fixed.draft_budget("r", 6, 1) == 6
    with pytest.raises(ValueError):
        Governor(max_batch_size=0, min_gain=1.0, probe_interval=4)
