"""The synchronous engine: owns the model, KV cache, scheduler, runner, sampler and plugins, and
advances every request by one step per `step()` call. The async engine and the offline benchmark
drive it; nothing here knows about HTTP."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable

import torch
from tqdm import tqdm

from engine.block_pool import BlockPool
from engine.config import EngineConfig
from engine.kv_cache_manager import KVCacheManager
from engine.kv_spec import KVSpec
from engine.kv_storage import create_kv_storage
from engine.loader.model_loader import build_model
from engine.loader.model_registry import resolve_model
from engine.loader.tokenizer import Tokenizer
from engine.model_runner import ModelRunner
from engine.models.ops import ModelOps
from engine.output_processor import RequestState, SampleState
from engine.outputs import RequestOutput
from engine.platforms import resolve_platform
from engine.request import Request
from engine.sampler import Sampler, logprob_entry
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.stats import EngineStats
from plugins.base import Plugin, Verdict
from plugins.registry import create_plugin

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LLMEngine:
    def __init__(self, config: EngineConfig, progress: bool = False) -> None:
        self.config = config
        self.platform = resolve_platform(config.device)
        device = self.platform.device
        dtype = self.platform.default_dtype if config.model.dtype == "auto" else _DTYPES[config.model.dtype]
        self.dtype = dtype
        self.resolved = resolve_model(config.model.model, progress=progress)
        self.model_name = self.resolved.name
        arch = self.resolved.arch
        self.arch = arch
        self.tokenizer = Tokenizer(self.resolved.tokenizer_dir)
        self.max_model_len = min(config.model.max_model_len or arch.max_position_embeddings,
                                 arch.max_position_embeddings)
        eos = set(arch.eos_token_ids) | set(self.tokenizer.eos_token_ids)
        self.eos_token_ids = tuple(sorted(eos))

        self.plugins: list[Plugin] = [create_plugin(name, dict(opts)) for name, opts in config.plugins]

        def transform(model):
            for plugin in self.plugins:
                model = plugin.transform_model(model)
            return model

        self.model = build_model(self.resolved, dtype, device, seed=config.model.seed, transform=transform)
        self.model.prepare(ModelOps.for_device(device.type), self.max_model_len)

        block_size = config.cache.block_size
        specs = []
        for layer in range(arch.num_layers):
            spec = KVSpec.dense(arch.num_kv_heads, arch.head_dim, dtype)
            for plugin in self.plugins:
                spec = plugin.kv_spec(layer, spec)
            specs.append(spec)
        self.kv_specs = specs
        bytes_per_block = sum(s.page_bytes(block_size) for s in specs)
        num_blocks = config.cache.num_blocks or max(2, config.cache.kv_cache_memory_bytes // bytes_per_block)
        self.kv_bytes_per_block = bytes_per_block
        self.kv_storages = [create_kv_storage(s, num_blocks, block_size, device) for s in specs]
        self.kv = KVCacheManager(BlockPool(num_blocks, config.cache.enable_prefix_caching), block_size)
        self.scheduler = Scheduler(config.scheduler, self.kv, self.max_model_len)
        self.runner = ModelRunner(self.model, self.kv_storages, self.kv, device)
        graph_batch = min(config.device.cuda_graph_max_batch, config.scheduler.max_num_seqs)
        if device.type == "cuda" and graph_batch > 0:
            from engine.cuda_graph_runner import CudaGraphRunner

            graphs = CudaGraphRunner(self.model, self.kv_storages, block_size, graph_batch, self.max_model_len,
                                     device)
            graphs.capture()
            graphs.block_table_of = self.kv.block_table
            graphs.lookahead_gate = lambda: not self.scheduler.waiting and not self.plugins
            self.runner.graph_runner = graphs
        self.sampler = Sampler(arch.vocab_size)
        self._states: dict[str, RequestState] = {}
        self._seq_to_state: dict[str, RequestState] = {}
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._num_steps = 0
        self._last_step_time: float | None = None
        self._ids = itertools.count()
        for plugin in self.plugins:
            plugin.setup(self)

    # ---- requests -----------------------------------------------------------------------------
    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams,
                         plugin_options: dict | None = None) -> dict:
        """Raises ValueError for a request that can never run; returns validated plugin options."""
        n = len(prompt_token_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        vocab = self.arch.vocab_size
        if any(not (0 <= t < vocab) for t in prompt_token_ids):
            raise ValueError(f"prompt contains token ids outside the vocabulary [0, {vocab})")
        if n >= self.max_model_len:
            raise ValueError(f"prompt has {n} tokens, which leaves no room to generate in the context "
                             f"window of {self.max_model_len} tokens")
        total = n + (params.max_tokens or 0)
        if params.max_tokens is not None and total > self.max_model_len:
            raise ValueError(f"prompt ({n} tokens) plus max_tokens ({params.max_tokens}) is {total} tokens, "
                             f"over the context window of {self.max_model_len} tokens")
        blocks_needed = -(-min(max(total, n + 1), self.max_model_len) // self.kv.block_size)
        if blocks_needed > self.kv.num_blocks:
            raise ValueError(f"request needs {blocks_needed} KV blocks but the cache has {self.kv.num_blocks}")
        options = dict(plugin_options or {})
        active = {p.name: p for p in self.plugins}
        validated = {}
        for name, opts in options.items():
            if name not in active:
                raise ValueError(f"plugin {name!r} is not enabled on this server "
                                 f"(enabled: {', '.join(active) or 'none'})")
            try:
                validated[name] = active[name].validate_options(opts)
            except Exception as exc:  # pydantic.ValidationError is a ValueError subclass
                raise ValueError(f"invalid options for plugin {name!r}: {exc}") from None
        return validated

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    plugin_options: dict | None = None) -> None:
        if request_id in self._states:
            raise ValueError(f"request id {request_id!r} is already in use")
        validated = self.validate_request(prompt_token_ids, params, plugin_options)
        arrival = time.monotonic()
        samples = []
        for i in range(params.n):
            seq_id = request_id if params.n == 1 else f"{request_id}#{i}"
            gen = None
            if params.seed is not None:
                gen = torch.Generator(device=self.platform.device).manual_seed(params.seed + i)
            seq = Request(seq_id, request_id, i, list(prompt_token_ids), params, self.eos_token_ids,
                          plugin_options=validated, arrival_time=arrival, generator=gen,
                          capture_logits=bool(params.extra.get("return_logits")))
            samples.append(SampleState(seq, self._detokenizer(params, prompt_token_ids),
                                       logprobs=[] if params.logprobs is not None else None))
        state = RequestState(request_id, list(prompt_token_ids), samples, arrival)
        self._states[request_id] = state
        for s in samples:
            self._seq_to_state[s.seq.request_id] = state
        for s in samples:
            for plugin in self.plugins:
                if not s.seq.is_finished:
                    self._guard(plugin, s.seq, plugin.on_request, s.seq)
            if not s.seq.is_finished:
                self.scheduler.add(s.seq)
        self._prompt_tokens_total += len(prompt_token_ids)

    def _detokenizer(self, params, prompt):
        from engine.detokenizer import IncrementalDetokenizer

        return IncrementalDetokenizer(self.tokenizer, params, prompt)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        state = self._states.get(request_id)
        if state is None:
            return None
        for s in state.samples:
            self.scheduler.finish(s.seq, "abort")
        return self._collect(state)

    def has_unfinished_requests(self) -> bool:
        return bool(self._states)

    def unfinished_request_ids(self) -> list[str]:
        return list(self._states)

    # ---- the step -----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        self._propose()
        sched = self.scheduler.schedule()
        if sched.is_empty():
            return self._drain_finished()
        batch = self.runner.prepare(sched)
        result = self.runner.execute(batch)
        self.scheduler.advance(sched)
        now = time.monotonic()
        touched: dict[str, RequestState] = {}
        for rid, logits in result.captured.items():
            self._seq_to_state[rid].captured_logits.append(logits)
        plain = [(req, row) for req, row, count in batch.sample_rows if count == 1]
        if plain:
            reqs = [req for req, _ in plain]
            sampled = self.sampler.sample(result, [row for _, row in plain], reqs)
            for req, (token, logprob) in zip(reqs, sampled, strict=True):
                state = self._seq_to_state[req.request_id]
                touched[state.request_id] = state
                self._append_token(state, req, token, logprob, now)
        spec = [(req, row, count) for req, row, count in batch.sample_rows if count > 1]
        if spec:
            logits = result.logits_of([row + i for _, row, count in spec for i in range(count)])
            first = list(itertools.accumulate((count for _, _, count in spec), initial=0))
            self._verify(sched, [(req, first[j], count) for j, (req, _, count) in enumerate(spec)], logits, now,
                         touched)
        self.scheduler.cache_blocks(sched)
        for plugin in self.plugins:
            try:
                plugin.after_forward(sched, None)
            except Exception as exc:
                self._fail_requests(list(sched.requests.values()), f"plugin {plugin.name!r} failed: {exc}")
        self._num_steps += 1
        self._last_step_time = now
        outputs = [self._collect(st) for st in touched.values()]
        outputs.extend(self._drain_finished(exclude=touched))
        return [o for o in outputs if o is not None]

    def _propose(self) -> None:
        """Asks plugins for draft tokens for running requests that are decoding."""
        if not self.plugins:
            return
        decoding = [r for r in self.scheduler.running if r.num_tokens - r.num_computed_tokens == 1]
        if not decoding:
            return
        for plugin in self.plugins:
            try:
                drafts = plugin.propose(decoding) or {}
            except Exception as exc:
                self._fail_requests(decoding, f"plugin {plugin.name!r} failed: {exc}")
                return
            for req in decoding:
                if req.request_id in drafts and not req.spec_token_ids:
                    req.spec_token_ids = [int(t) for t in drafts[req.request_id]]

    def _verify(self, sched, spec: list, logits: torch.Tensor, now: float, touched: dict) -> None:
        """Accepts a prefix of each request's drafts. A plugin's `verify` may decide how many; by
        default each position's token is sampled from the target and a draft is kept while it equals
        the sample, which is exact for greedy and, for deterministic drafts, preserves the sampling
        distribution too. The token after the last accepted draft always comes from the target."""
        by_req = {req.request_id: logits[row:row + count] for req, row, count in spec}
        accepted: dict[str, int] = {}
        for plugin in self.plugins:
            try:
                accepted.update(plugin.verify(sched, sched.spec_tokens, by_req) or {})
            except Exception as exc:
                self._fail_requests([r for r, _, _ in spec], f"plugin {plugin.name!r} failed: {exc}")
                return
        for req, row, count in spec:
            if req.is_finished:
                continue
            state = self._seq_to_state[req.request_id]
            touched[state.request_id] = state
            drafts = sched.spec_tokens[req.request_id]
            verdict = accepted.get(req.request_id)
            if isinstance(verdict, int):
                verdict = Verdict(verdict)
            for i in range(count):
                chosen = verdict is not None and (i < min(verdict.num_accepted, len(drafts)) or (
                    i == verdict.num_accepted and verdict.next_token is not None))
                if chosen:
                    token = drafts[i] if i < verdict.num_accepted else verdict.next_token
                    # a verifier's choice is reported as the sampler reports its own
                    logprob = (None if req.params.logprobs is None else
                               logprob_entry(torch.log_softmax(logits[row + i], -1), token, req.params.logprobs))
                else:
                    ((token, logprob),) = self.sampler(logits[row + i:row + i + 1], [req])
                self._append_token(state, req, token, logprob, now)
                if req.is_finished or i == len(drafts) or token != drafts[i] or (
                        chosen and i >= verdict.num_accepted):
                    break
            # accepted drafts' KV is already in place; rejected drafts' slots get overwritten later
            if not req.is_finished:
                req.num_computed_tokens = req.num_tokens - 1

    def _append_token(self, state: RequestState, req: Request, token: int, logprob, now: float) -> None:
        sample = next(s for s in state.samples if s.seq is req)
        if req.first_token_time is None:
            req.first_token_time = now
        req.output_token_ids.append(token)
        self._generation_tokens_total += 1
        if sample.logprobs is not None and logprob is not None:
            sample.logprobs.append(logprob)
        stop_str = sample.detok.add([token])
        p = req.params
        if stop_str is not None:
            self.scheduler.finish(req, "stop", stop_str)
        elif token in p.stop_token_ids and req.num_output_tokens >= p.min_tokens:
            self.scheduler.finish(req, "stop", token)
        elif token in req.eos_token_ids and not p.ignore_eos and req.num_output_tokens >= p.min_tokens:
            self.scheduler.finish(req, "stop", None)
        elif req.num_tokens >= req.max_total_tokens(self.max_model_len):
            self.scheduler.finish(req, "length")
        if not req.is_finished:
            for plugin in self.plugins:
                action = self._guard(plugin, req, plugin.on_tokens, req, [token])
                if action is None or req.is_finished:
                    continue
                if action.kind == "finish":
                    self.scheduler.finish(req, "stop", action.reason or plugin.name)
                elif action.kind == "inject" and action.text:
                    ids = self.tokenizer.encode(action.text)
                    req.output_token_ids.extend(ids)
                    sample.detok.add(ids)
                    if req.num_tokens >= req.max_total_tokens(self.max_model_len):
                        self.scheduler.finish(req, "length")

    def _guard(self, plugin: Plugin, req: Request, fn, *args):
        """Runs a plugin hook; an exception fails only that request."""
        try:
            return fn(*args)
        except Exception as exc:
            log.exception("plugin %s failed on request %s", plugin.name, req.request_id)
            self._fail_requests([req], f"plugin {plugin.name!r} failed: {exc}")
            return None

    def _fail_requests(self, reqs: Iterable[Request], message: str) -> None:
        for req in reqs:
            state = self._seq_to_state.get(req.request_id)
            if state is not None:
                state.error = message
            self.scheduler.finish(req, "error")

    def _collect(self, state: RequestState) -> RequestOutput | None:
        if state.finished_reported:
            return None
        out = state.make_output()
        if out.finished:
            state.finished_reported = True
            out.logits = state.assembled_logits()
            self._states.pop(state.request_id, None)
            for s in state.samples:
                self._seq_to_state.pop(s.seq.request_id, None)
        return out

    def _drain_finished(self, exclude: dict | None = None) -> list[RequestOutput]:
        """Outputs of requests finished outside the sampling path (abort, plugin error)."""
        done = [st for rid, st in self._states.items() if st.finished and not (exclude and rid in exclude)]
        return [o for o in (self._collect(st) for st in done) if o is not None]

    # ---- convenience --------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 progress: bool = False) -> list[RequestOutput]:
        """Offline batch: runs every prompt to completion, returns outputs in input order."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{next(self._ids)}" for _ in prompts]
        for rid, prompt, p in zip(ids, prompts, plist, strict=True):
            self.add_request(rid, prompt, p)
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(prompts), desc="generate", disable=not progress, unit="req")
        while self.has_unfinished_requests():
            for out in self.step():
                if out.finished:
                    results[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [results[rid] for rid in ids]

    def warmup(self) -> None:
        """One full-budget prefill and a few decode steps, so first real requests do not pay one-time
        costs (kernel builds, allocator growth, library dispatch). Leaves counters and cache clean."""
        n = min(self.config.scheduler.max_num_batched_tokens, self.max_model_len - 4, 512)
        blocks = -(-(n + 4) // self.kv.block_size)
        if n < 1 or blocks > self.kv.num_blocks:
            return
        vocab = self.arch.vocab_size
        prompt = [(i * 7919) % vocab for i in range(n)]
        self.generate([prompt], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
        self.kv.pool.reset_prefix_cache()
        self.kv.prefix_cache_queries = self.kv.prefix_cache_hits = 0
        self._prompt_tokens_total = self._generation_tokens_total = self._num_steps = 0

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_blocks_total=self.kv.num_blocks, num_blocks_free=self.kv.num_free_blocks,
            prefix_cache_queries=self.kv.prefix_cache_queries, prefix_cache_hits=self.kv.prefix_cache_hits,
            num_preemptions=self.scheduler.num_preemptions, prompt_tokens_total=self._prompt_tokens_total,
            generation_tokens_total=self._generation_tokens_total, num_steps=self._num_steps,
            last_step_time=self._last_step_time, kv_bytes_per_token=self.kv_bytes_per_block / self.kv.block_size,
            kv_bits_mean=sum(min(s.key_bits, 16) + min(s.value_bits, 16) for s in self.kv_specs) / (2 * len(self.kv_specs)))

    def close(self) -> None:
        for plugin in self.plugins:
            try:
                plugin.close()
            except Exception:
                log.exception("plugin %s failed to close", plugin.name)
