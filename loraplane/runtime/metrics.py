"""Prometheus metrics of one runtime process, served at `GET /metrics`.

The executor reports what it ran (`op_finished`, `batch_ran`) and the API reads `render()`. Each
`RuntimeMetrics` owns its registry instead of using the process-global one, so tests and the
single-node mode can build several runtimes in one process without duplicate-series errors.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["PROMETHEUS_CONTENT_TYPE", "RuntimeMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class RuntimeMetrics:
    """The runtime's series; every method is cheap and safe to call from any thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        #: ops finished, by op type ("forward_backward", "optim_step", "sample", ...) and outcome
        self.ops = Counter(
            "loraplane_runtime_ops", "Operations finished, by type and outcome.", ["op", "outcome"],
            registry=self.registry,
        )
        #: how many forward/backward requests (of any adapters) shared one engine pass
        self.batch_works = Histogram(
            "loraplane_runtime_batch_requests", "Forward/backward requests gathered into one engine pass.",
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        #: how many distinct adapters shared one engine pass
        self.batch_adapters = Histogram(
            "loraplane_runtime_batch_adapters", "Distinct adapters in one engine pass.",
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        #: wall time of one engine call, by op type
        self.step_latency = Histogram(
            "loraplane_runtime_step_latency_seconds", "Wall time of one engine call, by op type.", ["op"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        #: tokens processed by forward/backward passes (rate() of it is tokens/s)
        self.tokens = Counter(
            "loraplane_runtime_tokens", "Tokens processed by forward/backward passes.", registry=self.registry,
        )
        #: tokens/s of the last forward/backward pass
        self.tokens_per_second = Gauge(
            "loraplane_runtime_tokens_per_second", "Throughput of the last forward/backward pass.",
            registry=self.registry,
        )
        #: ops accepted but not finished (set from the executor at scrape time)
        self.queue_depth = Gauge(
            "loraplane_runtime_queue_depth", "Operations queued or running.", registry=self.registry,
        )
        #: adapters on the device / offloaded (set at scrape time)
        self.adapters = Gauge(
            "loraplane_runtime_adapters", "Adapters by residency.", ["state"], registry=self.registry,
        )
        self._refresh: Callable[[RuntimeMetrics], None] | None = None

    def on_scrape(self, refresh: Callable[[RuntimeMetrics], None]) -> None:
        """Register a callback that sets the point-in-time gauges just before each scrape."""
        self._refresh = refresh

    def op_finished(self, op: str, outcome: str, seconds: float | None = None) -> None:
        """Count one finished op; `outcome` is "ok", "user_error" or "server_error"."""
        self.ops.labels(op=op, outcome=outcome).inc()
        if seconds is not None:
            self.step_latency.labels(op=op).observe(seconds)

    def batch_ran(self, works: int, adapters: int, tokens: int, seconds: float) -> None:
        """Record one batched forward/backward engine call."""
        self.batch_works.observe(works)
        self.batch_adapters.observe(adapters)
        self.tokens.inc(tokens)
        self.step_latency.labels(op="batch").observe(seconds)
        if seconds > 0:
            self.tokens_per_second.set(tokens / seconds)

    def refresh(self) -> None:
        """Set the point-in-time gauges; called before each scrape (`render`, single-node's /metrics)."""
        if self._refresh is not None:
            self._refresh(self)

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        self.refresh()
        return generate_latest(self.registry)
