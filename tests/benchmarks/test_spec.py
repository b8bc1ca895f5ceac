"""`tessera bench spec` on synthetic:tiny (speed plumbing only; figures come from the default model):
every workload runs both sides, the JSON has the issue's shape, the PNG is written."""

from __future__ import annotations

import json

import pytest

from server.cli import main


def test_spec_bench_shape(tmp_path):
    out = tmp_path / "spec.json"
    rc = main(["bench", "spec", "--model", "synthetic:tiny", "--repeats", "1", "--copy-tokens", "8", "--copy-prompts", "1",
               "--best-of-prompts", "1", "--best-of-tokens", "8", "--chat-requests", "4", "--chat-tokens", "4", "--chat-repeats", "2",
               "--judge-prompts", "1", "--judge-tokens", "6", "--taus", "0,5", "--draft-layers", "0",
               "--no-progress", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    for name in ("copy_b1", "best_of_4", "chat_c64"):
        w = data["workloads"][name]
        assert w["speedup"] > 0 and w["accept_len_mean"] >= 1.0
        assert w["tokens_per_s_on"] > 0 and w["tokens_per_s_off"] > 0
    assert set(data["workloads"]["copy_b1"]["by_proposer"]) == {"ngram", "suffix"}
    assert {"plain_step_ms", "per_draft_ms"} <= set(data["workloads"]["best_of_4"])
    # chat_c64: ABBA repeats, each one's figures kept, the headline is their median
    chat = data["workloads"]["chat_c64"]
    assert [r["order"] for r in chat["repeats"]] == ["off,on", "on,off"]
    ratios = sorted(r["speedup"] for r in chat["repeats"])
    assert chat["speedup"] == pytest.approx(sum(ratios) / 2)
    assert chat["speedup_min"] == ratios[0] and chat["speedup_max"] == ratios[1]
    assert 0 < chat["plugin_hook_ms_per_step"] and 0 < chat["plugin_hook_fraction_of_on_time"] < 1
    taus = [row["tau"] for row in data["judge"]]
    # the plugin's default tau is measured even when --taus leaves it out, and flagged as the default
    from plugins.spec_decode.plugin import SpecDecodePlugin
    assert taus == sorted({0.0, 5.0, SpecDecodePlugin.tau})
    assert [row["tau"] for row in data["judge"] if row["default"]] == [SpecDecodePlugin.tau]
    for row in data["judge"]:
        assert {"tau", "speedup", "accept_len_mean", "kl_mean"} <= set(row)
    # tau = 0 is exact matching: no relaxed acceptance, output identical to lossless
    assert data["judge"][0]["relaxed_accepts"] == 0 and data["judge"][0]["kl_mean"] == 0
    assert data["judge"][0]["identical_outputs"] == 1
    assert "cpu" in data["machine"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_bad_workload_name(tmp_path, capsys):
    rc = main(["bench", "spec", "--model", "synthetic:tiny", "--workloads", "nope", "--json",
               str(tmp_path / "x.json")])
    assert rc == 2 and "--workloads" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
