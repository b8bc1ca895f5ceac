"""`tessera bench roofline`: CLI registration, device naming and input validation (the measurement
itself needs a GPU and is recorded in benchmarks/results/roofline-<device>.json)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.roofline import device_slug, run
from server.cli import build_parser


def test_registered_with_issue_defaults():
    args = build_parser().parse_args(["bench", "roofline"])
    assert args.model == "synthetic:llama3-8b" and args.concurrency == "16,64,256"
    assert (args.input_len, args.output_len, args.prefill_len) == (128, 128, 2048)
    assert args.func is run


@pytest.mark.parametrize("name,slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                       ("NVIDIA A100-SXM4-80GB", "a100"), ("Tesla T4", "tesla-t4")])
def test_device_slug(name, slug):
    assert device_slug(name) == slug


def test_bad_input_is_a_value_error():
    parser = build_parser()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            run(parser.parse_args(["bench", "roofline"]))
    else:
        with pytest.raises(ValueError, match="synthetic"):
            run(parser.parse_args(["bench", "roofline", "--model", "smollm2-135m-instruct"]))
        with pytest.raises(ValueError, match="output-len"):
            run(parser.parse_args(["bench", "roofline", "--output-len", "1"]))
