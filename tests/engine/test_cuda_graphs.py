"""Decode under CUDA graphs gives the same greedy tokens as eager decode on the same engine (synthetic
model, bf16), through padded buckets and a batch that shrinks as requests finish; bucket selection
and config validation run everywhere, the GPU parts skip without CUDA."""

from __future__ import annotations

import random

import pytest
import torch

from engine.config import CacheConfig, DeviceConfig, EngineConfig, ModelConfig, SchedulerConfig
from engine.cuda_graph_runner import CudaGraphRunner, default_buckets
from engine.sampling_params import SamplingParams

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_default_buckets():
    assert default_buckets(1) == [1]
    assert default_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert default_buckets(256)[:6] == [1, 2, 4, 8, 16, 32] and default_buckets(256)[-1] == 256
    with pytest.raises(ValueError):
        default_buckets(0)


def test_config_and_device_validation():
    with pytest.raises(ValueError):
        DeviceConfig(cuda_graph_max_batch=-1)
    with pytest.raises(ValueError):
        CudaGraphRunner(None, [], 16, 4, 128, torch.device("cpu"))


def _engine(max_seqs: int, graphs: bool, model: str = "synthetic:smollm2-135m"):
    from engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(
        model=ModelConfig(model=model, dtype="bfloat16", max_model_len=1024),
        cache=CacheConfig(kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=2048),
        device=DeviceConfig(device="cuda", cuda_graph_max_batch=max_seqs if graphs else 0)))


def _count_replays(engine) -> list[int]:
    calls = [0]
    runner = engine.runner.graph_runner
    run = runner.run

    def counting(batch):
        calls[0] += 1
        return run(batch)
    runner.run = counting
    return calls


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("num_requests", [5, 13])
def test_graph_decode_matches_eager(num_requests):
    rng = random.Random(num_requests)
    engine = _engine(16, graphs=True)
    assert engine.runner.graph_runner is not None and engine.runner.graph_runner.graphs
    vocab = engine.arch.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randrange(3, 90))] for _ in range(num_requests)]
    # different lengths: the decode batch shrinks step by step, crossing bucket boundaries
    params = [SamplingParams(temperature=0.0, max_tokens=20 + 7 * i, min_tokens=20 + 7 * i, ignore_eos=True)
              for i in range(num_requests)]
    replays = _count_replays(engine)
    graph_out = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
    graphs = engine.runner.graph_runner
    assert replays[0] > 20, "decode steps did not run through the CUDA graphs"
    assert graphs.lookahead_hits > 20, "decode steps were not launched ahead"
    graphs.drain()
    engine.runner.graph_runner = None
    eager_out = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
    engine.runner.graph_runner = graphs
    assert [len(t) for t in graph_out] == [p.max_tokens for p in params]
    assert graph_out == eager_out


@pytest.mark.cuda
@needs_cuda
def test_graphs_off_by_config_and_padding_leaves_cache_alone():
    engine = _engine(8, graphs=False)
    assert engine.runner.graph_runner is None
    engine = _engine(8, graphs=True)
    storage = engine.kv_storages[0]
    before = storage.k_cache.clone()
    # three real rows in the bucket of 4: the padded row must not write anywhere
    out = engine.generate([[5, 6, 7], [8, 9, 10, 11], [12, 13]],
                          SamplingParams(temperature=0.0, max_tokens=3, min_tokens=3, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 3 for o in out)
    changed = (storage.k_cache != before).any(dim=(1, 2, 3)).nonzero().flatten().tolist()
    # only the blocks of the three requests changed (one block each at block_size 16)
    assert len(changed) <= 3


@pytest.mark.cuda
@needs_cuda
def test_lookahead_misses_on_stop_tokens_keep_outputs_exact():
    """A stop token ends a request the step after its look-ahead was launched: the look-ahead is
    discarded and every output still equals eager decoding."""
    engine = _engine(8, graphs=True)
    rng = random.Random(3)
    # prompt lengths equal mod the block size: all requests cross block boundaries on the same steps
    prompts = [[rng.randrange(3, engine.arch.vocab_size) for _ in range(21 + 16 * i)] for i in range(6)]
    free = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    first = [o.outputs[0].token_ids for o in engine.generate(prompts, free)]
    # a token request 0 first produces mid-way, on a step whose look-ahead stays inside its block
    j = next(j for j in range(8, 30) if first[0][j] not in first[0][:j] and (21 + j) % 16)
    stop = first[0][j]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, stop_token_ids=[stop])
    graphs = engine.runner.graph_runner
    misses = graphs.lookahead_misses
    graph_out = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
    assert graphs.lookahead_misses > misses
    assert len(graph_out[0]) <= j + 1
    graphs.drain()
    engine.runner.graph_runner = None
    eager_out = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
    assert graph_out == eager_out
