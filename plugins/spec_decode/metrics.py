"""The plugin's counters and their Prometheus export (`tessera_spec_decode_*`). Counters are plain ints
updated on the engine thread; a scrape reads them as they are."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

PREFIX = "tessera_spec_decode_"


@dataclass
class SpecDecodeMetrics:
    drafts: int = 0  # proposals verified (one per request per step)
    draft_tokens: int = 0
    accepted_tokens: int = 0
    emitted_tokens: int = 0  # tokens produced by verification steps (accepted + the target's own)
    steps: int = 0  # steps with at least one decoding request
    steps_off: dict[str, int] = field(default_factory=lambda: {"batch_size": 0, "loss": 0, "opt_out": 0})
    # per draft position i: drafts that reached position i, and how many of those were accepted
    position_drafts: list[int] = field(default_factory=list)
    position_accepted: list[int] = field(default_factory=list)
    judge_relaxed: int = 0  # judge acceptances of a token other than the target's choice
    judge_relaxed_kl_sum: float = 0.0

    def record(self, drafted: int, accepted: int, emitted: int) -> None:
        self.drafts += 1
        self.draft_tokens += drafted
        self.accepted_tokens += accepted
        self.emitted_tokens += emitted
        while len(self.position_drafts) < drafted:
            self.position_drafts.append(0)
            self.position_accepted.append(0)
        for i in range(drafted):
            self.position_drafts[i] += 1
            if i < accepted:
                self.position_accepted[i] += 1

    @property
    def steps_off_total(self) -> int:
        return sum(self.steps_off.values())

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per verification step (accepted drafts + the target's token), as speculative
        decoding papers report it."""
        return self.emitted_tokens / self.drafts if self.drafts else 0.0

    def acceptance_by_position(self) -> list[float]:
        # a scrape may land between the two appends of record(): read the common length only
        n = min(len(self.position_accepted), len(self.position_drafts))
        return [a / d if d else 0.0 for a, d in zip(self.position_accepted[:n], self.position_drafts[:n],
                                                    strict=True)]

    def as_dict(self) -> dict:
        return {"drafts": self.drafts, "draft_tokens": self.draft_tokens, "accepted_tokens": self.accepted_tokens,
                "emitted_tokens": self.emitted_tokens, "acceptance_rate": self.acceptance_rate,
                "mean_accepted_length": self.mean_accepted_length, "steps": self.steps,
                "steps_off": dict(self.steps_off), "acceptance_by_position": self.acceptance_by_position(),
                "judge_relaxed": self.judge_relaxed, "judge_relaxed_kl_sum": self.judge_relaxed_kl_sum}


class SpecDecodeCollector:
    """A prometheus_client collector over one plugin's counters."""

    def __init__(self, metrics: SpecDecodeMetrics, labels: dict[str, str] | None = None) -> None:
        self._m = metrics
        self._labels = dict(labels or {})

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(PREFIX + name, doc, labels=list(self._labels))
        c.add_metric(list(self._labels.values()), value)
        return c

    def collect(self) -> Iterable[Metric]:
        m = self._m
        keys, vals = list(self._labels), list(self._labels.values())
        yield self._counter("drafts", "Draft proposals verified.", m.drafts)
        yield self._counter("draft_tokens", "Draft tokens verified.", m.draft_tokens)
        yield self._counter("accepted_tokens", "Draft tokens accepted.", m.accepted_tokens)
        yield self._counter("emitted_tokens", "Tokens emitted by verification steps.", m.emitted_tokens)
        yield self._counter("judge_relaxed", "Judge acceptances of a token other than the target's choice.",
                            m.judge_relaxed)
        off = CounterMetricFamily(PREFIX + "steps_off", "Steps with speculation switched off, by reason.",
                                  labels=[*keys, "reason"])
        for reason, n in m.steps_off.items():
            off.add_metric([*vals, reason], n)
        yield off
        yield self._counter("steps", "Steps with decoding requests.", m.steps)
        pos = GaugeMetricFamily(PREFIX + "acceptance_by_position", "Fraction of drafts at each position "
                                "that were accepted.", labels=[*keys, "position"])
        for i, rate in enumerate(m.acceptance_by_position()):
            pos.add_metric([*vals, str(i)], rate)
        yield pos
        g = GaugeMetricFamily(PREFIX + "mean_accepted_length", "Tokens per verification step.", labels=keys)
        g.add_metric(vals, m.mean_accepted_length)
        yield g
