from __future__ import annotations

import pytest

from engine.config import CacheConfig, DeviceConfig, EngineConfig, ModelConfig, SchedulerConfig


def make_engine(model: str = "smollm2-135m-instruct", *, num_blocks: int | None = None,
                max_num_seqs: int = 64, max_num_batched_tokens: int = 512, prefix_caching: bool = True,
                plugins: tuple = (), dtype: str = "float32", device: str = "cpu"):
    from engine.llm_engine import LLMEngine

    return LLMEngine(EngineConfig(
        model=ModelConfig(model=model, dtype=dtype),
        cache=CacheConfig(num_blocks=num_blocks, enable_prefix_caching=prefix_caching,
                          kv_cache_memory_bytes=256 << 20),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        plugins=plugins, device=DeviceConfig(device=device)))


@pytest.fixture(scope="session")
def default_engine(default_model_dir):
    """A shared engine over the default model (fp32, CPU). Tests must leave it idle."""
    engine = make_engine()
    yield engine
    assert not engine.has_unfinished_requests()


CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three primary colors.",
    "What is 12 times 12?",
    "Give me a short tip for learning to cook.",
    "Who wrote Romeo and Juliet?",
    "Translate 'good morning' into Spanish.",
    "What does a CPU do?",
    "Name a mammal that can fly.",
    "Why is the sky blue?",
    "Suggest a name for a pet goldfish.",
    "What is the boiling point of water in Celsius?",
    "Describe a rainbow to a child.",
    "What is Python used for?",
    "How many days are in a leap year?",
    "Write one sentence about autumn.",
    "What is photosynthesis?",
    "Recommend a book for a long train ride.",
    "What are the planets closest to the sun?",
]
