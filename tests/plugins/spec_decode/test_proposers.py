"""Proposers without a model: prompt lookup, suffix statistics shared by sibling samples and by recent
requests, and the layer choice of the self-draft."""

from __future__ import annotations

import pytest

from engine.request import Request
from engine.sampling_params import SamplingParams
from plugins.spec_decode.draft_model import evenly_kept_layers, parse_layers
from plugins.spec_decode.ngram_index import NgramIndex
from plugins.spec_decode.proposers.ngram import NgramProposer
from plugins.spec_decode.proposers.suffix import SuffixProposer
from plugins.spec_decode.suffix_index import SuffixIndex


def _req(rid: str, prompt: list[int], output: list[int] = (), parent: str | None = None, index: int = 0):
    r = Request(rid, parent or rid, index, list(prompt), SamplingParams())
    r.output_token_ids = list(output)
    return r


def test_ngram_index_proposes_what_followed_the_longest_latest_match():
    idx = NgramIndex(1, 3)
    idx.sync([1, 2, 3, 4, 9, 2, 3, 5, 7, 1, 2, 3])
    # tail [1, 2, 3] matches at 0..2 (followed by 4); the shorter [2, 3] was seen later (followed by 5)
    assert idx.lookup(3) == [4, 9, 2]
    idx.sync([1, 2, 3, 4, 9, 2, 3, 5, 7, 1, 2, 3, 8])
    assert idx.lookup(2) == []  # 8 never appeared before


def test_ngram_index_continues_periodic_matches_through_the_draft():
    idx = NgramIndex(2, 2)
    idx.sync([7, 7, 7, 7])
    assert idx.lookup(5) == [7, 7, 7, 7, 7]


def test_ngram_proposer_respects_k_and_min_n():
    prop = NgramProposer(min_n=2, max_n=4)
    req = _req("a", [10, 11, 12, 13, 10, 11])
    assert prop.propose([req], {"a": 2})["a"].tokens == [12, 13]
    assert prop.propose([req], {"a": 0}) == {}
    lone = _req("b", [10, 11, 12, 13, 14, 12])  # only a 1-gram match: below min_n
    assert prop.propose([lone], {"b": 3}) == {}
    with pytest.raises(ValueError):
        NgramProposer(min_n=3, max_n=2)


def test_suffix_index_counts_and_removes():
    idx = SuffixIndex(1, 2)
    idx.add([1, 2, 3, 1, 2, 4], 0)
    assert idx.continuations([5, 1, 2], 2) == {3: 1, 4: 1}
    assert idx.continuations([2], 1) == {3: 1, 4: 1}
    idx.remove([1, 2, 3, 1, 2, 4])
    assert len(idx) == 0


def test_suffix_shares_sibling_outputs():
    prop = SuffixProposer(min_n=1, max_n=4, min_score=0.0, global_weight=0.5, max_recent=8)
    prompt = [100, 101, 102]
    a = _req("p#0", prompt, [5, 6, 7, 8, 9], parent="p", index=0)
    b = _req("p#1", prompt, [5, 6], parent="p", index=1)
    prop.propose([a, b], {"p#0": 0, "p#1": 0})  # both join the family
    # b's tail [5, 6] was followed by 7, 8, 9 in its sibling's output
    assert prop.propose([b], {"p#1": 3})["p#1"].tokens == [7, 8, 9]
    # an unrelated request does not see the family's text
    c = _req("q", [1, 2, 3, 5, 6])
    assert prop.propose([c], {"q": 3}) == {}


def test_suffix_is_frequency_weighted_and_stops_on_low_score():
    prop = SuffixProposer(min_n=1, max_n=2, min_score=0.5, global_weight=0.5, max_recent=8)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2, 4]
    req = _req("r", prompt + [1, 2])
    # after [1, 2]: 3 twice, 4 once -> 3 (p = 2/3); after [2, 3]: 1 always; after [3, 1]: 2 always;
    # after [1, 2] again p = 2/3 -> cumulative 4/9 < 0.5 stops there
    assert prop.propose([req], {"r": 8})["r"].tokens == [3, 1, 2]


def test_suffix_recent_requests_window():
    prop = SuffixProposer(min_n=1, max_n=3, min_score=0.0, global_weight=1.0, max_recent=1)
    done = _req("old", [50, 51], [60, 61, 62, 63])
    prop.propose([done], {"old": 0})
    done.status = done.status.__class__.FINISHED
    prop.release(done)
    new = _req("new", [70, 60, 61])
    assert prop.propose([new], {"new": 2})["new"].tokens == [62, 63]
    # a second finished request pushes the first out of the one-request window
    other = _req("other", [80], [81, 82])
    prop.propose([other], {"other": 0})
    prop.release(other)
    assert prop.propose([_req("new2", [70, 60, 61])], {"new2": 2}) == {}


def test_draft_layer_choice():
    assert parse_layers("0-2,5", 8) == [0, 1, 2, 5]
    with pytest.raises(ValueError):
        parse_layers("0-9", 8)
    with pytest.raises(ValueError):
        parse_layers("a", 8)
    kept = evenly_kept_layers(30, 0.5)
    assert len(kept) == 15 and kept[0] == 0 and kept[-1] == 29
    assert evenly_kept_layers(2, 0.5) == [0]
