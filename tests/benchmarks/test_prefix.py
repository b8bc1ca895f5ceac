"""`tessera bench prefix` on synthetic:tiny: the second request hits exactly the prefix's full blocks."""

from __future__ import annotations

import json

import pytest

from server.cli import main


def test_prefix_hits_full_blocks(tmp_path):
    pytest.importorskip("engine.llm_engine")
    out = tmp_path / "prefix.json"
    # 40-token prefix, 16-token blocks: only the 2 full blocks (32 tokens) can be shared.
    rc = main(["bench", "prefix", "--model", "synthetic:tiny", "--prefix-len", "40", "--suffix-len", "8",
               "--repeats", "2", "--block-size", "16", "--no-progress", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    res = data["results"]
    pc = res["prefix_cache"]
    assert pc["expected_hit_tokens"] == 32
    assert pc["after"]["prefix_cache_hits"] - pc["before"]["prefix_cache_hits"] == 32
    assert pc["after"]["prefix_cache_queries"] - pc["before"]["prefix_cache_queries"] == 48
    assert pc["all_repeats_hit_expected"] and pc["first_request_hit_tokens"] == 0
    assert len(res["repeats"]) == 2
    for r in res["repeats"]:
        assert r["second_hit_tokens"] == 32 and r["first_hit_tokens"] == 0
    for key in ("first_request_ttft_s", "second_request_ttft_s", "second_request_no_cache_ttft_s"):
        assert res[key] > 0
    assert data["workload"]["prefix_len"] == 40 and "machine" in data
    assert out.with_suffix(".png").stat().st_size > 0


def test_prompts_share_only_the_prefix():
    import argparse

    from benchmarks.prefix import make_prompts
    from engine.loader.model_registry import resolve_model
    from engine.loader.tokenizer import Tokenizer

    resolved = resolve_model("synthetic:tiny", progress=False)
    args = argparse.Namespace(repeats=3, prefix_len=24, suffix_len=4, seed=0)
    rounds, warm = make_prompts(Tokenizer(resolved.tokenizer_dir), resolved.arch.vocab_size, args)
    assert len(rounds) == 3 and len(warm) == 2
    prefixes = [p for p, _, _ in rounds]
    assert len({tuple(p) for p in prefixes}) == 3  # a fresh prefix per repeat keeps request A cold
    for p, a, b in rounds:
        assert len(p) == 24 and len(a) == len(b) == 4 and a[0] != b[0]


def test_bad_arguments_are_user_errors(tmp_path):
    assert main(["bench", "prefix", "--repeats", "0", "--json", str(tmp_path / "p.json")]) == 2
