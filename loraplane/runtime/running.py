"""Running a turn's ops on the engine, each failure kept to the requests it belongs to.

Callers: `loraplane.runtime.executor`'s model thread, which takes the ops a turn runs
(`loraplane.runtime.turns`) and hands each kind here: a batched forward/backward, a single op, a
sample request joining the decode batch, one decode step. Used from the model thread only.

## Residency
Before an op runs, the adapters it needs (and those with rows decoding) are brought onto the
device, and the least recently used idle ones beyond `max_resident_adapters` are offloaded, as
`residency.choose_evictions` decides.

## Failures
- A batched forward/backward that raises is retried work by work, so that only the culprit's
  future fails; the engine already fails a bad work alone in its own result slot.
- A single op's error is its own result.
- A decode step that raises fails every request in the decode batch (none may hang on it); a
  finished request whose samples cannot be recorded for `stable_reinforce` fails alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import torch

from loraplane.core import errors
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import residency, scheduling
from loraplane.runtime.metrics import RuntimeMetrics
from loraplane.runtime.ops import Op
from loraplane.runtime.results import Results

log = logging.getLogger(__name__)


class OpRunner:
    """Runs ops on one engine and its decode batch; see the module docstring.

    Args:
        engine: the `loraplane.runtime.engine.Engine` (or anything with its interface).
        settings: runtime settings (`max_resident_adapters`, `offload_to`).
        metrics: where batches and decode steps are counted.
        results: where each op finishes.
        usage: marks adapters as used now and returns every adapter's last use and the adapters
            with queued ops (`Executor._usage`, which takes the executor's lock).
    """

    def __init__(self, engine: Any, settings: RuntimeSettings, metrics: RuntimeMetrics, results: Results,
                 usage: Callable[[Collection[str]], tuple[dict[str, float], set[str]]]) -> None:
        self.engine = engine
        self.settings = settings
        self.decoder = engine.decoder
        self.metrics = metrics
        self.results = results
        self._usage = usage
        #: KV bytes the running sample requests may reach (`scheduling.kv_bound`), for /readyz
        self.kv_bytes_reserved = 0

    def run_batch(self, batch: list[Op]) -> None:
        """One `engine.forward_backward` over the batch's works; each op finishes with its own slot."""
        adapters = {op.adapter_id for op in batch}
        try:
            self.make_resident(adapters)
        except Exception as exc:
            for op in batch:
                self.results.finish(op, exc=exc)
            return
        started = time.perf_counter()
        try:
            results = self.engine.forward_backward([op.payload for op in batch])
        except Exception as exc:
            if len(batch) > 1:
                # isolate the culprit: one work at a time, so only its own future fails
                log.warning("batched forward_backward failed (%r); retrying its %d requests one by one",
                            exc, len(batch))
                for op in batch:
                    self.run_batch([op])
                return
            results = [exc]
        seconds = time.perf_counter() - started
        self.metrics.batch_ran(len(batch), len(adapters), sum(op.tokens for op in batch), seconds)
        self.metrics.model_time(_shares((op.tenant, max(op.tokens, 1)) for op in batch), seconds)
        for op, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self.results.finish(op, exc=result)
            else:
                self.results.finish(op, result=result, seconds=seconds)

    def run_single(self, op: Op, apply: Callable[[Any], Any]) -> None:
        """`apply(op.payload)` with the op's adapter on the device; its result or error finishes the op."""
        started = time.perf_counter()
        try:
            if op.adapter_id is not None:
                self.make_resident({op.adapter_id})
            result = apply(op.payload)
        except Exception as exc:
            result, error = None, exc
        else:
            error = None
        seconds = time.perf_counter() - started
        self.metrics.model_time({op.tenant: 1}, seconds)
        self.results.finish(op, result=result, exc=error, seconds=None if error else seconds)

    def admit(self, op: Op) -> None:
        """Add a sample request to the decode batch (unless it was cancelled while it waited)."""
        if op.future.done():  # cancelled while it waited
            return
        self.metrics.sample_admitted(time.perf_counter() - op.queued_at)
        try:
            if op.adapter_id is not None:
                self.make_resident({op.adapter_id})
            self.decoder.add(op.job)
        except Exception as exc:
            self.results.finish(op, exc=exc)

    def decode_step(self) -> int:
        """One step of the decode batch; finishes the requests it completes and returns their count."""
        rows = _shares((req.job.tag.tenant, max(req.live, 1)) for req in self.decoder.requests())
        started = time.perf_counter()
        try:
            with torch.no_grad():
                report = self.decoder.step()
        except Exception as exc:  # a fault outside any one pass: no request may hang on it
            log.exception("decode step failed; failing the requests in the batch")
            failure = errors.ServerError(f"sampling failed: {type(exc).__name__}: {exc}")
            for job, error in self.decoder.fail_all(failure):
                self.results.finish(job.tag, exc=error)
            return 0
        seconds = time.perf_counter() - started
        self.metrics.model_time(rows, seconds)
        self.kv_bytes_reserved = scheduling.kv_bound(self.decoder.needs(), self.engine.kv_bytes_per_token)
        self.metrics.decode_step(report.decode_rows, report.new_tokens, report.prefill_tokens, seconds,
                                 report.ttft_s, self.decoder.kv_bytes())
        for job, outcome in report.finished:
            self._sample_done(job.tag, outcome)
        return len(report.finished)

    def _sample_done(self, op: Op, outcome: Any) -> None:
        if not isinstance(outcome, Exception):
            try:
                op.payload.record(self.engine, outcome)
            except Exception as exc:  # a record that cannot be kept fails its own request only
                outcome = exc if isinstance(exc, errors.LoraplaneError) else errors.ServerError(
                    f"could not record the samples for stable_reinforce: {type(exc).__name__}: {exc}")
        if isinstance(outcome, Exception):
            self.results.finish(op, exc=outcome)
        else:
            self.metrics.sampled(op.tenant, sum(len(seq.tokens) for seq in getattr(outcome, "sequences", ())))
            self.results.finish(op, result=outcome, seconds=time.perf_counter() - op.queued_at)

    def make_resident(self, needed: Collection[Any]) -> None:
        """Bring `needed` adapters onto the device, offloading LRU idle ones beyond the budget."""
        needed = {a for a in needed if a is not None} | self.decoder.adapters()
        last_used, busy = self._usage(needed)
        resident = {a: last_used.get(a, 0.0) for a in self.engine.adapter_ids() if self.engine.is_resident(a)}
        for adapter_id in residency.choose_evictions(resident, needed, busy, self.settings.max_resident_adapters):
            self.engine.offload(adapter_id, to=self.settings.offload_to)
        for adapter_id in needed:
            if not self.engine.is_resident(adapter_id):
                self.engine.ensure_resident(adapter_id)


def _shares(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """tenant -> its share of a pass or a decode step (tokens or rows), for the model-time metric. Pure."""
    out: dict[str, int] = {}
    for tenant, share in pairs:
        out[tenant] = out.get(tenant, 0) + share
    return out
