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
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from loraplane.core import errors

__all__ = ["PROMETHEUS_CONTENT_TYPE", "RuntimeMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


#: The runtime's series, one a line: attribute, kind, name (after `loraplane_runtime_`), labels,
#: buckets, then `|` and the help text. `RuntimeMetrics` has an attribute per line.
SERIES = """
ops                       counter    ops                          op,outcome         -       | Operations finished, by type and outcome.
batch_works               histogram  batch_requests               -                  batch   | Forward/backward requests gathered into one engine pass.
batch_adapters            histogram  batch_adapters               -                  batch   | Distinct adapters in one engine pass.
step_latency              histogram  step_latency_seconds         op                 latency | Wall time of one engine call, by op type.
tokens                    counter    tokens                       -                  -       | Tokens processed by forward/backward passes.
tenant_tokens_total       counter    tenant_tokens                tenant             -       | Tokens of each tenant's forward/backward work run in passes.
tenant_ops                counter    tenant_ops                   tenant,op,outcome  -       | Operations finished, by tenant, type and outcome.
tenant_sampled_tokens     counter    tenant_sampled_tokens        tenant             -       | Tokens sampled for each tenant's requests.
tenant_queue_depth        gauge      tenant_queue_depth           tenant             -       | Operations of each tenant queued or running.
tenant_rejections         counter    tenant_rejections            tenant,limit       -       | Work refused (429) because a queue limit was reached, by tenant and limit.
tenant_model_seconds      counter    tenant_model_seconds         tenant             -       | Seconds of the model thread spent on each tenant's work (a shared pass split by tokens or rows).
tokens_per_second         gauge      tokens_per_second            -                  -       | Throughput of the last forward/backward pass.
queue_depth               gauge      queue_depth                  -                  -       | Operations queued or running.
adapters                  gauge      adapters                     state              -       | Adapters by residency.
decode_rows               gauge      decode_rows                  -                  -       | Sequences in the decode batch at its last step.
decode_rows_per_step      histogram  decode_rows_per_step         -                  row     | Sequences decoded together in one step.
decode_tokens             counter    decode_tokens                -                  -       | Tokens sampled by the decode batch.
prefill_tokens            counter    prefill_tokens               -                  -       | Prompt tokens prefilled by the decode batch.
decode_tokens_per_second  gauge      decode_tokens_per_second     -                  -       | Tokens sampled per second in the last decode step.
time_to_first_token       histogram  time_to_first_token_seconds  -                  latency | Seconds from joining the batch to the first token.
sample_queue_wait         histogram  sample_queue_wait_seconds    -                  latency | Seconds a sample request waited to join the batch.
sample_queue              gauge      sample_queue                 -                  -       | Sample requests waiting to join the batch.
kv_bytes                  gauge      kv_cache_bytes               -                  -       | Bytes the sampling KV cache holds now.
kv_reserved_bytes         gauge      kv_cache_reserved_bytes      -                  -       | Bytes the running sample requests' KV cache may reach.
kv_budget_bytes           gauge      kv_cache_budget_bytes        -                  -       | The kv_cache_bytes setting.
"""
_KINDS: dict[str, Any] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
_BUCKETS = {"batch": _BATCH_BUCKETS, "latency": _LATENCY_BUCKETS, "row": _ROW_BUCKETS}


def _series(registry: CollectorRegistry) -> Iterator[tuple[str, Any]]:
    """(attribute, metric) of every line of `SERIES`, registered in `registry`."""
    for line in SERIES.strip().splitlines():
        spec, doc = line.split(" | ", 1)
        attr, kind, name, labels, buckets = spec.split()
        options: dict[str, Any] = {"registry": registry}
        if buckets != "-":
            options["buckets"] = _BUCKETS[buckets]
        yield attr, _KINDS[kind]("loraplane_runtime_" + name, doc, [] if labels == "-" else labels.split(","),
                                 **options)


class RuntimeMetrics:
    """The runtime's series; every method is cheap and safe to call from any thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for attr, metric in _series(self.registry):
            setattr(self, attr, metric)
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
