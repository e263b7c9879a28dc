"""Prometheus metrics of one runtime process, served at `GET /metrics`.

The executor reports what it ran (`op_finished`, `batch_ran`) and the API reads `render()`. Each
`RuntimeMetrics` owns its registry instead of using the process-global one, so tests and the
single-node mode can build several runtimes in one process without duplicate-series errors.

Per tenant (label `tenant`, "-" when the caller named none): ops by kind and outcome, tokens
trained and sampled, queued ops, work refused by back-pressure, and the seconds of model-thread
time spent on its work. A pass shared by several tenants is split between them by their tokens
(training) or rows (decoding), the measure the fair share divides the model by.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from loraplane.core import errors

__all__ = ["PROMETHEUS_CONTENT_TYPE", "RuntimeMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


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
        #: tokens each tenant's work put through training passes (its share of the model's time)
        self.tenant_tokens_total = Counter(
            "loraplane_runtime_tenant_tokens", "Tokens of each tenant's forward/backward work run in passes.",
            ["tenant"], registry=self.registry,
        )
        #: per tenant: ops finished, tokens sampled, ops queued, work refused, model-thread seconds
        self.tenant_ops = Counter(
            "loraplane_runtime_tenant_ops", "Operations finished, by tenant, type and outcome.",
            ["tenant", "op", "outcome"], registry=self.registry,
        )
        self.tenant_sampled_tokens = Counter(
            "loraplane_runtime_tenant_sampled_tokens", "Tokens sampled for each tenant's requests.",
            ["tenant"], registry=self.registry,
        )
        self.tenant_queue_depth = Gauge(
            "loraplane_runtime_tenant_queue_depth", "Operations of each tenant queued or running.",
            ["tenant"], registry=self.registry,
        )
        self.tenant_rejections = Counter(
            "loraplane_runtime_tenant_rejections", "Work refused (429) because a queue limit was reached, "
            "by tenant and limit.", ["tenant", "limit"], registry=self.registry,
        )
        self.tenant_model_seconds = Counter(
            "loraplane_runtime_tenant_model_seconds", "Seconds of the model thread spent on each tenant's work "
            "(a shared pass split by tokens or rows).", ["tenant"], registry=self.registry,
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
        #: sequences in the decode batch at its last step, and their distribution over steps
        self.decode_rows = Gauge(
            "loraplane_runtime_decode_rows", "Sequences in the decode batch at its last step.", registry=self.registry,
        )
        self.decode_rows_per_step = Histogram(
            "loraplane_runtime_decode_rows_per_step", "Sequences decoded together in one step.",
            buckets=_ROW_BUCKETS, registry=self.registry,
        )
        #: tokens sampled (rate() of it is the decode throughput) and the last step's tokens/s
        self.decode_tokens = Counter(
            "loraplane_runtime_decode_tokens", "Tokens sampled by the decode batch.", registry=self.registry,
        )
        self.prefill_tokens = Counter(
            "loraplane_runtime_prefill_tokens", "Prompt tokens prefilled by the decode batch.", registry=self.registry,
        )
        self.decode_tokens_per_second = Gauge(
            "loraplane_runtime_decode_tokens_per_second", "Tokens sampled per second in the last decode step.",
            registry=self.registry,
        )
        #: time from a sample request's admission to its first token, and its wait before admission
        self.time_to_first_token = Histogram(
            "loraplane_runtime_time_to_first_token_seconds", "Seconds from joining the batch to the first token.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.sample_queue_wait = Histogram(
            "loraplane_runtime_sample_queue_wait_seconds", "Seconds a sample request waited to join the batch.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.sample_queue = Gauge(
            "loraplane_runtime_sample_queue", "Sample requests waiting to join the batch.", registry=self.registry,
        )
        #: KV cache bytes held now, the bound of the running requests, and the budget
        self.kv_bytes = Gauge(
            "loraplane_runtime_kv_cache_bytes", "Bytes the sampling KV cache holds now.", registry=self.registry,
        )
        self.kv_reserved_bytes = Gauge(
            "loraplane_runtime_kv_cache_reserved_bytes", "Bytes the running sample requests' KV cache may reach.",
            registry=self.registry,
        )
        self.kv_budget_bytes = Gauge(
            "loraplane_runtime_kv_cache_budget_bytes", "The kv_cache_bytes setting.", registry=self.registry,
        )
        self._refresh: Callable[[RuntimeMetrics], None] | None = None
        self._queued_tenants: set[str] = set()  #: tenants whose queue-depth gauge exists

    def on_scrape(self, refresh: Callable[[RuntimeMetrics], None]) -> None:
        """Register a callback that sets the point-in-time gauges just before each scrape."""
        self._refresh = refresh

    def tenant_tokens(self, tenant: str, tokens: int) -> None:
        """A tenant's op of `tokens` tokens went into a training pass."""
        self.tenant_tokens_total.labels(tenant or "-").inc(tokens)

    def op_finished(self, op: str, outcome: str, seconds: float | None = None, tenant: str | None = None) -> None:
        """Count one finished op; `outcome` is "ok", "user_error" or "server_error"."""
        self.ops.labels(op=op, outcome=outcome).inc()
        if tenant is not None:
            self.tenant_ops.labels(tenant or "-", op, outcome).inc()
        if seconds is not None:
            self.step_latency.labels(op=op).observe(seconds)

    def model_time(self, shares: Mapping[str, float], seconds: float) -> None:
        """`seconds` of the model thread went to work of these tenants, split by `shares` (tokens,
        rows or 1 each)."""
        total = sum(shares.values())
        if total <= 0 or seconds <= 0:
            return
        for tenant, share in shares.items():
            if share > 0:
                self.tenant_model_seconds.labels(tenant or "-").inc(seconds * share / total)

    def sampled(self, tenant: str, tokens: int) -> None:
        """A tenant's sample request finished with `tokens` tokens sampled."""
        if tokens > 0:
            self.tenant_sampled_tokens.labels(tenant or "-").inc(tokens)

    def rejected(self, tenant: str, limit: str) -> None:
        """A tenant's work was refused at the queue limit `limit` (the setting's name)."""
        self.tenant_rejections.labels(tenant or "-", limit).inc()

    @contextmanager
    def counting_refusals(self, tenant: str, limit: str) -> Iterator[None]:
        """Count a refusal of the block (a LoraplaneError) under the limit it names, else `limit`."""
        try:
            yield
        except errors.LoraplaneError as exc:
            self.rejected(tenant, exc.field or limit)
            raise

    def tenant_queues(self, depth: Mapping[str, int]) -> None:
        """Set each tenant's queued ops (scrape time); tenants gone since the last scrape read 0."""
        now = {tenant or "-": count for tenant, count in depth.items()}
        for tenant in self._queued_tenants - now.keys():
            self.tenant_queue_depth.labels(tenant).set(0)
        for tenant, count in now.items():
            self.tenant_queue_depth.labels(tenant).set(count)
        self._queued_tenants |= now.keys()

    def batch_ran(self, works: int, adapters: int, tokens: int, seconds: float) -> None:
        """Record one batched forward/backward engine call."""
        self.batch_works.observe(works)
        self.batch_adapters.observe(adapters)
        self.tokens.inc(tokens)
        self.step_latency.labels(op="batch").observe(seconds)
        if seconds > 0:
            self.tokens_per_second.set(tokens / seconds)

    def sample_admitted(self, waited_s: float) -> None:
        """A sample request joined the decode batch after waiting `waited_s`."""
        self.sample_queue_wait.observe(waited_s)

    def decode_step(self, rows: int, tokens: int, prefill_tokens: int, seconds: float,
                    ttft_s: list[float], kv_bytes: int) -> None:
        """Record one step of the decode batch."""
        self.decode_rows.set(rows)
        if rows:
            self.decode_rows_per_step.observe(rows)
        self.decode_tokens.inc(tokens)
        self.prefill_tokens.inc(prefill_tokens)
        if seconds > 0 and tokens:
            self.decode_tokens_per_second.set(tokens / seconds)
        for t in ttft_s:
            self.time_to_first_token.observe(t)
        self.kv_bytes.set(kv_bytes)

    def refresh(self) -> None:
        """Set the point-in-time gauges; called before each scrape (`render`, single-node's /metrics)."""
        if self._refresh is not None:
            self._refresh(self)

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        self.refresh()
        return generate_latest(self.registry)
