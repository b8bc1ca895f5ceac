"""`tessera bench capacity` end to end on the tiny synthetic model: both caches get the same byte budget,
the quantized one gets more blocks and runs more sequences at once, and the JSON/PNG are written."""

from __future__ import annotations

import json

import pytest

from server.cli import main


def test_capacity_bench_writes_side_by_side_results(tmp_path):
    out = tmp_path / "cap.json"
    rc = main(["bench", "capacity", "--model", "synthetic:tiny", "--config", "kv4", "--input-len", "64",
               "--output-len", "4", "--baseline-seqs", "2", "--json", str(out), "--no-progress"])
    assert rc == 0
    data = json.loads(out.read_text())
    base, quant = data["variants"]["unquantized"], data["variants"]["kv_mixed_precision"]
    assert base["kv_bytes_per_block"] * base["num_blocks"] <= data["kv_cache_memory_bytes"]
    assert quant["kv_bytes_per_block"] * quant["num_blocks"] <= data["kv_cache_memory_bytes"]
    assert base["max_seqs_by_blocks"] == 2 and base["max_running_observed"] <= 2
    assert quant["max_running_observed"] > base["max_running_observed"]
    assert data["ratios"]["admitted_seqs_ratio"] == pytest.approx(
        quant["max_running_observed"] / base["max_running_observed"])
    assert quant["output_tokens"] == base["output_tokens"] == data["num_requests"] * 4
    assert out.with_suffix(".png").is_file()
    assert "cpu" in data["machine"]


def test_capacity_rejects_bad_lengths(tmp_path):
    assert main(["bench", "capacity", "--model", "synthetic:tiny", "--input-len", "0",
                 "--json", str(tmp_path / "x.json")]) == 2
