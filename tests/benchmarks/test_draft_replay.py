"""The offline replay of drafting policies over recorded best-of-N samples: steps and verified tokens
counted by hand on families that repeat their prompt or an earlier request."""

from __future__ import annotations

import pytest

from benchmarks.draft_replay import Family, replay
from plugins.spec_decode.suffix_index import SuffixIndex

# two samples that both copy the prompt's first five tokens; the prompt ends in a token (1) seen
# nowhere before, so the first step has nothing to draft from
FAMILY = Family(prompt=[5, 6, 7, 8, 9, 1], samples=[[5, 6, 7, 8, 9], [5, 6, 7, 8, 9]])


def test_replay_counts_lock_step_steps_and_verified_tokens():
    plain = replay(FAMILY, "plain")
    assert plain.shapes == [(2, 2)] * 5
    # step 1: no draft, both emit 5; step 2: the tail "1 5" matches "5" in the prompt, so the chain
    # drafts 6 7 8 9 1 5 6 7 (the prompt, then "1 5" as the siblings wrote it): 4 accepted + 1 each
    long = replay(FAMILY, "chain", k=8)
    assert long.shapes == [(2, 2), (2, 18)]
    # one draft a step: 5 | 6 accepted + 7 | 8 accepted + 9
    assert replay(FAMILY, "chain", k=1).steps == 3
    assert replay(FAMILY, "tree", k=1).steps == 3  # a one-node tree is a one-token chain
    oracle = replay(FAMILY, "oracle")
    assert oracle.steps == 2 and oracle.shapes[1] == (2, 10)  # only the accepted path is verified


def test_replay_drafts_from_the_recent_window_as_the_proposer_does():
    family = Family(prompt=[2, 3], samples=[[7, 8, 9], [7, 8, 9]])
    recent = SuffixIndex(1, 8)
    recent.add([1, 3, 7, 8, 9], 0)  # an earlier request where 3 was followed by 7 8 9
    alone = replay(family, "chain", k=8)
    assert alone.steps == 3  # nothing to draft from: the siblings only ever run level
    helped = replay(family, "chain", k=8, recent=recent)
    assert helped.shapes == [(2, 8)]  # 7 8 9 drafted and accepted by both in the first step
    assert replay(family, "chain", k=8, recent=recent, recent_weight=0.0).steps == 3
    assert replay(family, "oracle", recent=recent).steps == 1
    assert replay(family, "oracle", recent=recent, recent_weight=0.0).steps == 3


def test_replay_rejects_an_unknown_policy():
    with pytest.raises(ValueError, match="unknown policy"):
        replay(FAMILY, "beam")
