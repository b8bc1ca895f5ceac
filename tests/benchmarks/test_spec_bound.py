"""`tessera bench spec-bound` on synthetic:tiny: bad flags are refused, the JSON and PNG are written."""

from __future__ import annotations

import json

import pytest

from server.cli import main


@pytest.mark.parametrize("flags, message", [(["--ks", "0"], "--ks sizes must be >= 1"),
                                            (["--tree-nodes", "4,x"], "--tree-nodes must be comma-separated"),
                                            (["--prompts", "99"], "--prompts must be in"),
                                            (["--n", "1"], "--n must be >= 2")])
def test_spec_bound_command_rejects_bad_flags_before_loading_a_model(flags, message, capsys):
    assert main(["bench", "spec-bound", "--model", "synthetic:tiny", *flags]) == 2
    assert message in capsys.readouterr().err


def test_spec_bound_command_writes_json_and_png(tmp_path):
    out = tmp_path / "bound.json"
    rc = main(["bench", "spec-bound", "--model", "synthetic:tiny", "--prompts", "2", "--max-tokens", "12",
               "--ks", "1,3", "--tree-nodes", "2", "--no-progress", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["premise"]["samples_identical"] is True
    pol = data["policies"]
    assert set(pol) == {"plain", "chain_k1", "chain_k3", "tree_2", "oracle"}
    assert pol["plain"]["steps_ratio"] == 1.0 and abs(pol["plain"]["speedup_bound"] - 1.0) < 1e-12
    for row in pol.values():
        assert row["steps"] <= pol["plain"]["steps"] and row["steps"] >= pol["oracle"]["steps"]
        assert len(row["steps_ratio_per_family"]) == 2 and row["speedup_bound"] > 0
    assert set(data["decode_step_ms"]) == {"1", "2", "3", "4"}
    assert out.with_suffix(".png").stat().st_size > 0
