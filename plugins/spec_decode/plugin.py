"""The `spec_decode` plugin: speculative decoding with selectable proposers (ngram, suffix, draft) and
verifiers (lossless, judge), switched off per step under load, per-request control through
`"plugins": {"spec_decode": {"enable", "k", "tau", "proposer", "verifier"}}`, and Prometheus counters."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from plugins.base import Plugin, Verdict
from plugins.registry import register_plugin
from plugins.spec_decode.governor import Governor
from plugins.spec_decode.metrics import SpecDecodeCollector, SpecDecodeMetrics
from plugins.spec_decode.options import SpecDecodeOptions
from plugins.spec_decode.proposal import Proposal
from plugins.spec_decode.proposers import get_proposer_class, proposer_names
from plugins.spec_decode.proposers.base import Proposer
from plugins.spec_decode.step_cost import StepCost
from plugins.spec_decode.verifiers import create_verifier, verifier_names
from plugins.spec_decode.verifiers.judge import JudgeVerifier
from plugins.spec_decode.verifiers.registry import Verifier


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


@register_plugin("spec_decode")
@dataclass
class SpecDecodePlugin(Plugin):
    proposer: str = "ngram"
    verifier: str = "lossless"
    extra_proposers: str = ""  # comma-separated proposers also loaded, for requests that pick them
    k: int = 6  # most draft tokens per request per step
    tau: float = 0.4  # judge: KL(p_target || p_draft) threshold
    enable_by_default: bool = True  # requests speculate unless they opt out
    # safety under load
    max_batch_size: int = 8  # speculation is off in steps with more decoding requests
    min_gain: float = 1.0  # expected saved time must be >= min_gain x verification cost
    probe_interval: int = 16
    adaptive_k: bool = True
    # ngram (prompt lookup)
    ngram_min_n: int = 2
    ngram_max_n: int = 5
    # suffix
    suffix_min_n: int = 1
    suffix_max_n: int = 8
    suffix_min_score: float = 0.1
    suffix_global_weight: float = 0.5
    suffix_max_recent: int = 64
    # draft model: a layer-skipping view of the target unless draft_model names another model
    draft_model: str = ""
    draft_dtype: str = "auto"
    draft_layers: str = ""  # e.g. "0-7,28,29"; empty: draft_layer_ratio of the layers, evenly kept
    draft_layer_ratio: float = 0.5
    draft_cache_fraction: float = 0.5  # draft KV blocks as a fraction of the target's

    name: ClassVar[str] = "spec_decode"
    hooks: ClassVar[frozenset[str]] = frozenset({"setup", "propose", "verify", "after_forward", "close"})
    request_options: ClassVar[type[BaseModel]] = SpecDecodeOptions

    def __post_init__(self) -> None:
        known = proposer_names()
        for name in [self.proposer, *_names(self.extra_proposers)]:
            if name not in known:
                raise ValueError(f"spec_decode: unknown proposer {name!r}; available: {', '.join(known)}")
        if self.verifier not in verifier_names():
            raise ValueError(f"spec_decode: unknown verifier {self.verifier!r}; "
                             f"available: {', '.join(verifier_names())}")
        if not 1 <= self.k <= 32:
            raise ValueError(f"spec_decode: k must be in [1, 32], got {self.k}")
        if self.tau < 0:
            raise ValueError(f"spec_decode: tau must be >= 0, got {self.tau}")
        if not 0 < self.draft_cache_fraction <= 1:
            raise ValueError(f"spec_decode: draft_cache_fraction must be in (0, 1], got {self.draft_cache_fraction}")
        self.metrics = SpecDecodeMetrics()
        self._governor = Governor(self.max_batch_size, self.min_gain, self.probe_interval, self.adaptive_k)
        self._verifiers: dict[str, Verifier] = {name: create_verifier(name) for name in verifier_names()}
        self._proposers: dict[str, Proposer] = {}
        self._scheduler = None
        # this step's proposals: request id -> (proposal, the request's token count when proposed)
        self._pending: dict[str, tuple[Proposal, int]] = {}
        self._live: dict[str, Any] = {}  # requests seen, to release their state once finished
        self._step_start: float | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def setup(self, engine: Any) -> None:
        self._scheduler = engine.scheduler
        for name in dict.fromkeys([self.proposer, *_names(self.extra_proposers)]):
            self._proposers[name] = get_proposer_class(name).build(self, engine)

    def close(self) -> None:
        for p in self._proposers.values():
            p.close()

    def validate_options(self, options: dict) -> BaseModel:
        opts = SpecDecodeOptions.model_validate(options or {})
        if opts.proposer is not None and self._proposers and opts.proposer not in self._proposers:
            raise ValueError(f"proposer {opts.proposer!r} is not loaded on this server "
                             f"(loaded: {', '.join(self._proposers)})")
        if opts.verifier is not None and opts.verifier not in self._verifiers:
            raise ValueError(f"unknown verifier {opts.verifier!r}; available: {', '.join(self._verifiers)}")
        return opts

    @property
    def step_cost(self) -> StepCost:
        """The governor's measured step costs (plain step per batch size, extra time per draft)."""
        return self._governor.cost

    def metric_collectors(self) -> list:
        return [SpecDecodeCollector(self.metrics)]

    # ---- per request settings -----------------------------------------------------------------
    def _options(self, req) -> SpecDecodeOptions | None:
        opts = req.plugin_options.get(self.name)
        if isinstance(opts, dict):  # options that came through the server are plain dicts
            opts = SpecDecodeOptions.model_validate(opts)
        return opts

    def _setting(self, req, key: str):
        opts = self._options(req)
        value = getattr(opts, key) if opts is not None else None
        if key == "enable":
            return self.enable_by_default if value is None else value
        return getattr(self, key) if value is None else value

    # ---- hooks --------------------------------------------------------------------------------
    def propose(self, batch: list) -> dict[str, list[int]]:
        self._step_start = time.perf_counter()
        self._release_finished()
        self._pending.clear()
        m = self.metrics
        m.steps += 1
        for req in batch:
            self._live[req.request_id] = req
        running = len(self._scheduler.running) if self._scheduler is not None else len(batch)
        if not self._governor.batch_allows(running):
            m.steps_off["batch_size"] += 1
            return {}
        by_proposer: dict[str, tuple[list, dict[str, int]]] = {}
        opted_out = off = 0
        for req in batch:
            if not self._setting(req, "enable"):
                opted_out += 1
                continue
            room = req.max_total_tokens(self._max_len()) - req.num_tokens - 1
            k = min(self._setting(req, "k"), room)
            if k > 0:
                k = self._governor.draft_budget(req.request_id, k, len(batch))
                off += k == 0  # the governor judged speculation a loss for this request
            reqs, ks = by_proposer.setdefault(self._setting(req, "proposer"), ([], {}))
            reqs.append(req)
            ks[req.request_id] = max(k, 0)
        if opted_out == len(batch):
            m.steps_off["opt_out"] += 1
            return {}
        if off and off + opted_out == len(batch):
            m.steps_off["loss"] += 1
        drafts: dict[str, list[int]] = {}
        for name, (reqs, ks) in by_proposer.items():
            if not any(ks.values()) and name != "suffix":
                continue
            lengths = {req.request_id: req.num_tokens for req in reqs}
            for rid, proposal in self._proposers[name].propose(reqs, ks).items():
                if proposal.tokens:
                    self._pending[rid] = (proposal, lengths[rid])
                    drafts[rid] = proposal.tokens
        return drafts

    def _max_len(self) -> int:
        return self._scheduler.max_model_len if self._scheduler is not None else 1 << 30

    def verify(self, batch: Any, drafts: dict[str, list[int]], logits: dict) -> dict[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        for rid, rows in logits.items():
            pending = self._pending.get(rid)
            req = batch.requests.get(rid)
            if pending is None or req is None:
                continue
            proposal = pending[0]
            tokens = drafts.get(rid, [])
            if len(tokens) < len(proposal.tokens):  # the scheduler trimmed drafts to fit the budget
                proposal = Proposal(tokens, None if proposal.probs is None else proposal.probs[:len(tokens)])
            verifier = self._verifiers[self._setting(req, "verifier")]
            verdict = verifier.verify(req, proposal, rows, float(self._setting(req, "tau")))
            if verdict is not None:
                verdicts[rid] = verdict
        judge = self._verifiers.get("judge")
        if isinstance(judge, JudgeVerifier) and judge.relaxed_kl:
            self.metrics.judge_relaxed += len(judge.relaxed_kl)
            self.metrics.judge_relaxed_kl_sum += sum(judge.relaxed_kl)
            judge.relaxed_kl.clear()
        return verdicts

    def after_forward(self, batch: Any, attention_stats: dict | None) -> None:
        for rid, drafted in batch.spec_tokens.items():
            pending = self._pending.get(rid)
            req = batch.requests.get(rid)
            if pending is None or req is None:
                continue
            new = req.all_token_ids[pending[1]:]
            accepted = 0
            while accepted < min(len(new), len(drafted)) and new[accepted] == drafted[accepted]:
                accepted += 1
            self.metrics.record(len(drafted), accepted, len(new))
            self._governor.record(rid, len(drafted), accepted)
        self._pending.clear()
        start, self._step_start = self._step_start, None
        if start is not None and self._decode_only(batch):
            num_drafts = sum(len(d) for d in batch.spec_tokens.values())
            self._governor.cost.observe(len(batch.num_scheduled_tokens), num_drafts, time.perf_counter() - start)
        if any(req.is_finished for req in batch.requests.values()):
            self._release_finished()  # free draft caches now, not at the next decode step

    @staticmethod
    def _decode_only(batch: Any) -> bool:
        spec = batch.spec_tokens
        return all(n == 1 + len(spec.get(rid, ())) for rid, n in batch.num_scheduled_tokens.items())

    def _release_finished(self) -> None:
        done = [req for req in self._live.values() if req.is_finished]
        for req in done:
            del self._live[req.request_id]
            self._governor.forget(req.request_id)
            for p in self._proposers.values():
                p.release(req)
