"""`tessera generate "PROMPT"`: applies the model's chat template and streams the answer to stdout."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="answer one prompt, streamed to stdout")
    p.add_argument("prompt", help="user message (use '-' to read it from stdin)")
    p.add_argument("--model", default=None, help="HF dir, .gguf, synthetic:<shape> or a registered name")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | npu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--kv-cache-memory", type=int, default=64, help="KV cache size in MiB")
    p.set_defaults(func=run)


def run(args) -> int:
    from engine.config import CacheConfig, DeviceConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    config = EngineConfig(
        model=ModelConfig(model=args.model or ModelConfig().model, dtype=args.dtype),
        cache=CacheConfig(kv_cache_memory_bytes=args.kv_cache_memory << 20),
        scheduler=SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=512),
        device=DeviceConfig(device=args.device))
    engine = LLMEngine(config, progress=True)
    tok = engine.tokenizer
    if args.raw or tok.chat_template is None:
        ids = tok.encode(prompt, add_special_tokens=True)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        ids = tok.tokenize_chat(messages + [{"role": "user", "content": prompt}])
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                            max_tokens=args.max_tokens)
    engine.add_request("cli", ids, params)
    out = sys.stdout
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.write(o.outputs[0].delta_text)
            out.flush()
    out.write("\n")
    return 0
