"""Prometheus metrics, named like vLLM's (`vllm:` -> `tessera:`) so existing dashboards carry over.

Engine gauges and counters are read from `backend.stats()` at scrape time, so they are never stale;
latency histograms are observed by the server as requests progress. Each app has its own
CollectorRegistry: several apps in one process (tests, multi-model) must not collide."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.stats import EngineStats

PREFIX = "tessera:"

# vLLM's buckets, so percentiles compare across the two servers.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)


class _EngineStatsCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats], labels: dict[str, str]) -> None:
        self._stats = stats
        self._labels = labels

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(PREFIX + name, doc, labels=list(self._labels))
        g.add_metric(list(self._labels.values()), value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(PREFIX + name, doc, labels=list(self._labels))
        c.add_metric(list(self._labels.values()), value)
        return c

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        yield self._gauge("num_requests_running", "Requests in the running batch.", s.num_running)
        yield self._gauge("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting)
        yield self._gauge("kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).",
                          s.kv_cache_usage)
        yield self._gauge("kv_cache_blocks_free", "Free KV cache blocks.", s.num_blocks_free)
        yield self._gauge("kv_cache_blocks_total", "KV cache blocks in the pool.", s.num_blocks_total)
        yield self._counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                            s.prefix_cache_queries)
        yield self._counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits)
        yield self._counter("num_preemptions", "Preemptions (requests recomputed after losing blocks).",
                            s.num_preemptions)
        yield self._counter("prompt_tokens", "Prefill tokens processed.", s.prompt_tokens_total)
        yield self._counter("generation_tokens", "Tokens generated.", s.generation_tokens_total)
        yield self._counter("engine_steps", "Engine steps run.", s.num_steps)
        yield self._gauge("kv_cache_bytes_per_token", "KV cache bytes per token, all layers, scales included.",
                          s.kv_bytes_per_token)
        yield self._gauge("kv_cache_bits_mean", "Mean KV bits over layers, keys and values (16 = unquantized).",
                          s.kv_bits_mean)


class ServerMetrics:
    """Every series carries the served model's name, which a backend may only know once its model has
    loaded: `bind(name)` sets it (the app does so at startup); nothing is observed before."""

    def __init__(self, stats: Callable[[], EngineStats], inflight: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        self._labels: dict[str, str] = {"model_name": ""}
        names = list(self._labels)
        self.registry.register(_EngineStatsCollector(stats, self._labels))
        self._ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time to first token.", names,
                               buckets=TTFT_BUCKETS, registry=self.registry)
        self._itl = Histogram(PREFIX + "inter_token_latency_seconds", "Time between output tokens.", names,
                              buckets=ITL_BUCKETS, registry=self.registry)
        self._e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Request latency, arrival to finish.",
                              names, buckets=LATENCY_BUCKETS, registry=self.registry)
        self._queue_time = Histogram(PREFIX + "request_queue_time_seconds", "Time waiting before first "
                                     "scheduled.", names, buckets=LATENCY_BUCKETS, registry=self.registry)
        self._success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                                [*names, "finished_reason"], registry=self.registry)
        self._rejected = Counter(PREFIX + "request_rejected", "Requests refused by admission control.",
                                 [*names, "reason"], registry=self.registry)
        self._inflight_gauge = Gauge(PREFIX + "num_requests_inflight", "Requests accepted by the HTTP server "
                                     "and not yet answered.", names, registry=self.registry)
        self._inflight = inflight

    def bind(self, model_name: str) -> None:
        self._labels["model_name"] = model_name  # shared with the engine-stats collector
        self.ttft = self._ttft.labels(**self._labels)
        self.itl = self._itl.labels(**self._labels)
        self.e2e = self._e2e.labels(**self._labels)
        self.queue_time = self._queue_time.labels(**self._labels)
        self._inflight_gauge.labels(**self._labels).set_function(self._inflight)

    def add_collectors(self, collectors: Iterable[Collector]) -> None:
        """Extra collectors (plugins export their own `tessera_<plugin>_*` series)."""
        for c in collectors:
            self.registry.register(c)

    def finished(self, reason: str | None) -> None:
        self._success.labels(**self._labels, finished_reason=reason or "unknown").inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(**self._labels, reason=reason).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
