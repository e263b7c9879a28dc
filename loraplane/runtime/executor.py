"""The executor: the door every op comes in by, and the one model thread that runs every engine call.

Callers (the runtime API, declarative training, the benchmark) submit ops from any thread or from
the asyncio loop and get a `concurrent.futures.Future` back. One thread, the model thread, owns the
engine: it is the only one that calls into it (apart from `engine.validate`, a read-only check
run at submit time so that bad input fails at once), so no engine state is ever shared between
threads and no per-adapter locks exist.

## Parts
- `loraplane.runtime.queues`: each adapter's ops, released in the SDK's seq order;
- `loraplane.runtime.turns`: what one turn runs (a pure policy, fair share between tenants included);
- `loraplane.runtime.running`: running those ops on the engine, each failure kept to its requests,
  with their adapters on the device (`loraplane.runtime.residency` chooses what to offload);
- `loraplane.runtime.results`: accepted ops by request id, and how each finishes.

## A turn
Every turn of the model thread runs the control calls (create/delete/offload/load adapters), then
what `turns.plan_turn` chose: the waiting sample requests that join the decode batch, one batched
`engine.forward_backward` over ready forward/backward heads (bounded by `max_batch_tokens`), the
ready single ops (optim_step, save, load, snapshot), those that became ready meanwhile, and one
step of the decode batch (`loraplane.runtime.decoding`). Nothing of one adapter can overtake its
own earlier ops.
The sampling limits (`max_queued_samples`, `max_decode_rows`, `kv_cache_bytes`) and their
answers are in docs/limits.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from concurrent.futures import Future
from typing import Any

from loraplane.core import errors
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import admission, queues, reports, scheduling, turns
from loraplane.runtime.adapter_calls import AdapterCalls
from loraplane.runtime.metrics import RuntimeMetrics
from loraplane.runtime.ops import (
    FORWARD_KINDS,
    LoadState,
    Op,
    OptimStep,
    Sample,
    SaveSampler,
    SaveState,
    Snapshot,
    new_request_id,
    op_kind,
    work_tokens,
)
from loraplane.runtime.queues import AdapterQueues, SampleQueue
from loraplane.runtime.results import Results, settle
from loraplane.runtime.running import OpRunner

__all__ = ["FORWARD_KINDS", "Executor", "LoadState", "Op", "OptimStep", "Sample", "SaveSampler", "SaveState",
           "Snapshot"]

log = logging.getLogger(__name__)


class Executor(AdapterCalls):
    """Queues, orders and batches ops of many adapters onto one engine on one thread.

    Args:
        engine: the `loraplane.runtime.engine.Engine` (or anything with its interface).
        settings: runtime settings (`seq_gap_timeout_s`, `max_batch_tokens`, budgets, offload target).
        clock: monotonic seconds; tests pass a fake one and call `wake()` / `run_once()`.
        metrics: where to report ops and batches (a fresh `RuntimeMetrics` when omitted).
        start: start the model thread now; tests pass False and drive `run_once()` themselves.
        reorder_window_s: how long `expect_seq=None` waits to learn the first seq.
    """

    def __init__(
        self,
        engine: Any,
        settings: RuntimeSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: RuntimeMetrics | None = None,
        start: bool = True,
        reorder_window_s: float = 0.25,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics or RuntimeMetrics()
        self._clock = clock
        self._reorder_window_s = reorder_window_s
        self._cond = threading.Condition()
        self._queues = AdapterQueues()
        self._control: deque[Op] = deque()
        self._samples = SampleQueue()
        self._results = Results(self.metrics)
        self._rotation = 0
        #: fair-share credit of each backlogged tenant, carried between training passes
        self._credit: dict[str, float] = {}
        self._running = 0
        self._sampling = 0  # requests in the decode batch
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._decoder = engine.decoder
        self._decoder.chunk_tokens = settings.prefill_chunk_tokens
        self._runner = OpRunner(engine, settings, self.metrics, self._results, self._usage)
        self.metrics.on_scrape(lambda metrics: reports.set_gauges(metrics, self))
        if start:
            self.start()

    @property
    def kv_bytes_reserved(self) -> int:
        """KV bytes the running sample requests may reach (`scheduling.kv_bound`), for /readyz."""
        return self._runner.kv_bytes_reserved

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the model thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="loraplane-model", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the model thread after its current call; queued ops fail with ServerError."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        for op in self._results.pending():
            settle(op.future, exc=errors.ServerError("the runtime is shutting down; retry on another runtime"))

    @property
    def alive(self) -> bool:
        """True while the model thread runs (or when the caller drives `run_once` itself)."""
        return not self._stopped and (self._thread is None or self._thread.is_alive())

    def wake(self) -> None:
        """Make the model thread re-check its queues now (tests call it after moving a fake clock)."""
        with self._cond:
            self._cond.notify_all()

    def adapter_progress(self, adapter_id: str) -> tuple[int | None, float]:
        """(next seq the adapter waits for, unix time it was last used); for AdapterInfo."""
        with self._cond:
            return self._queues.progress(adapter_id)

    # ---- ops -------------------------------------------------------------------------------

    def submit(self, adapter_id: str, seq_id: int | None, payload: Any,
               tenant: str | None = None) -> tuple[str, Future]:
        """Queue one op of an adapter; returns (request id, future).

        `tenant` names whose adapter it is (the gateway says so on each submit); training passes
        share the model between tenants by it (`fairshare`).

        `payload` is a `FwdBwdWork` or one of the op dataclasses of `loraplane.runtime.ops`. A
        repeated `(adapter_id, seq_id)` returns the first submit's request id and future. Raises
        InvalidInput at once when the engine rejects a forward/backward, NotFound for an unknown adapter,
        TooManyRequests past the queued-token limits, except for the seq the adapter's queue waits
        for: refusing it would hold the ops behind it (which fill the limit) until the gap timeout.
        """
        kind = op_kind(payload)
        if kind in FORWARD_KINDS:
            self.engine.validate(payload)
        with self._cond:
            self._check_open()
            entry = self._queues.get(adapter_id)
            existing = entry.queue.duplicate_of(seq_id)
            if existing is not None:
                return existing.request_id, existing.future
            entry.queue.check_window(seq_id)
            if tenant:
                entry.tenant = tenant
            tokens = work_tokens(payload) if kind in FORWARD_KINDS else 0
            if kind in FORWARD_KINDS and not entry.queue.unblocks(seq_id):
                with self.metrics.counting_refusals(entry.tenant, "max_queued_tokens"):
                    self._queues.check_room(entry.tenant, tokens, total=self.settings.max_queued_tokens,
                                            per_tenant=self.settings.max_queued_tokens_per_tenant)
            op = Op(request_id=new_request_id(), adapter_id=adapter_id, seq_id=seq_id, kind=kind, payload=payload,
                    tokens=tokens, tenant=entry.tenant)
            entry.queue.push(op, self._clock())
            self._results.remember(op)
            self._cond.notify_all()
        return op.request_id, op.future

    def submit_sample(self, payload: Any) -> tuple[str, Future]:
        """Queue a sampling request for the decode batch; returns (request id, future).

        The request is checked here (InvalidInput naming the field, NotFound for an unknown
        adapter, InvalidInput naming the limit when it could never fit this runtime) and refused
        with CapacityError while `max_queued_samples` requests already wait.
        """
        adapter_id = getattr(payload, "adapter_id", None)
        if adapter_id is not None and not self.engine.has_adapter(adapter_id):
            raise errors.NotFound(f"unknown adapter {adapter_id!r}", field="adapter_id")
        job = self.engine.prepare_sample(adapter_id, payload.prompt, payload.num_samples, payload.params,
                                         payload.options())
        need = job.need(prefilling=True)
        reason = scheduling.oversize_reason(need, self.engine.kv_bytes_per_token, self.settings.kv_cache_bytes,
                                            self.settings.max_decode_rows)
        if reason is not None:
            field = "num_samples" if need.decode_rows > self.settings.max_decode_rows else "sampling_params.max_tokens"
            raise errors.InvalidInput(reason, field=field)
        with self._cond:
            self._check_open()
            tenant = getattr(payload, "tenant", None) or ""
            with self.metrics.counting_refusals(tenant, "max_queued_samples"):
                self._samples.check_room(tenant, self.settings.max_queued_samples_per_tenant)
                op = Op(request_id=new_request_id(), adapter_id=adapter_id, seq_id=None, kind="sample", payload=payload,
                        tenant=tenant, job=job, queued_at=time.perf_counter())
                job.tag = op
                self._samples.push(op, self.settings.max_queued_samples)
            self._results.remember(op)
            self._cond.notify_all()
        return op.request_id, op.future

    def lookup(self, request_id: str) -> Op:
        """The op of a request id (its `future` holds the result); NotFound when unknown or expired."""
        return self._results.lookup(request_id)

    def queue_depth(self) -> int:
        """Ops accepted and not finished yet (queued, waiting for a seq, or running)."""
        with self._cond:
            return self._queues.queued() + len(self._samples) + len(self._control) + self._running + self._sampling

    def sample_queue(self) -> int:
        """Sample requests waiting to join the decode batch."""
        with self._cond:
            return len(self._samples)

    # ---- the model thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._has_work():
                    self._cond.wait(timeout=self._wait_timeout())
                if self._stopped:
                    return
            try:
                self.run_once()
            except Exception:  # a bug here must not kill the thread that serves everyone
                log.exception("executor turn failed")

    def run_once(self) -> int:
        """Run one scheduling turn on the calling thread; returns the number of ops finished.

        The model thread calls it in a loop; tests with `start=False` call it directly.
        """
        decoding = self._decoder.adapters()
        with self._cond:
            control = list(self._control)
            self._control.clear()
            self._queues.promote(self._clock(), self.settings.seq_gap_timeout_s, self._reorder_window_s)
            turn = turns.plan_turn(self._queued(decoding), turns.Limits.of(self.settings, self.engine.kv_bytes_per_token,
                                                                          self.engine.max_pass_tokens))
            admitted, batch, singles = self._take(turn)
            self._running = len(control) + len(batch) + len(singles)
        finished = 0
        try:
            for op in control:
                self._runner.run_single(op, lambda fn: fn(self.engine))
            for op in admitted:
                self._runner.admit(op)
            if batch:
                self._runner.run_batch(batch)
            for op in singles:
                self._runner.run_single(op, lambda payload: payload.apply(self.engine))
            late = self._take_late_singles() if batch or singles else []
            for op in late:
                self._runner.run_single(op, lambda payload: payload.apply(self.engine))
            if turn.decode and not self._decoder.idle:
                finished += self._runner.decode_step()
        finally:
            with self._cond:
                finished, self._running = finished + self._running, 0
                self._sampling = len(self._decoder.requests())
        return finished

    def _queued(self, decoding: set[str]) -> turns.Queued:
        """What waits now, as `turns.plan_turn` reads it (under the lock)."""
        running: Counter[str] = Counter()
        for req in self._decoder.requests():
            running[queues.tenant_of(req.job.tag)] += max(req.live, 1)
        return turns.Queued(
            adapters=self._queues.describe(), samples=self._samples.describe(), decoding=tuple(self._decoder.needs()),
            decoding_rows=running, decoding_adapters=frozenset(decoding), credit=self._credit,
            rotation=self._rotation)

    def _take(self, turn: turns.Turn) -> tuple[list[Op], list[Op], list[Op]]:
        """Pop the ops the turn runs from the queues (under the lock): (admitted samples, batch, singles)."""
        self._credit, self._rotation = turn.credit, turn.rotation
        admitted = self._samples.take(turn.sample_order, turn.admit)
        batch: list[Op] = []
        for adapter_id, count in turn.batch:
            taken = self._queues.take(adapter_id, count)
            if self.settings.fair_share:
                tenant = self._queues.entries[adapter_id].tenant
                for op in taken:
                    self.metrics.tenant_tokens(tenant, op.tokens)
            batch += taken
        singles = [op for adapter_id in turn.singles for op in self._queues.take(adapter_id, 1)]
        return admitted, batch, singles

    def _take_late_singles(self) -> list[Op]:
        """Pop the single ops that became ready while the turn ran (`turns.ready_singles`), and count
        them as running."""
        decoding = frozenset(self._decoder.adapters())
        with self._cond:
            ready = turns.ready_singles(self._queues.describe(), decoding)
            late = [op for adapter_id in ready for op in self._queues.take(adapter_id, 1)]
            self._running += len(late)
        return late

    def _has_work(self) -> bool:
        if self._control or self._samples or not self._decoder.idle:
            return True
        return self._queues.any_ready(self._clock(), self.settings.seq_gap_timeout_s, self._reorder_window_s)

    def _wait_timeout(self) -> float:
        deadline = self._queues.deadline(self.settings.seq_gap_timeout_s, self._reorder_window_s)
        if deadline is None:
            return 1.0
        return max(0.001, min(1.0, deadline - self._clock()))

    def _usage(self, needed: Collection[str]) -> tuple[dict[str, float], set[str]]:
        """Mark `needed` adapters as used now; every adapter's last use and the busy ones (`AdapterQueues.used`)."""
        with self._cond:
            return self._queues.used(needed, self._clock(), time.time())

    def _register(self, adapter_id: str, expect_seq: int | None) -> None:
        with self._cond:
            self._queues.register(adapter_id, expect_seq, self._clock())

    def _check_open(self) -> None:
        if self._stopped:
            raise errors.ServerError("the runtime is shutting down; retry on another runtime")

    def queued_by_tenant(self) -> dict[str, int]:
        """Ops of each tenant accepted and not running yet (queued or waiting to join the decode batch)."""
        with self._cond:
            return admission.queued_tokens([(e.tenant, len(e.queue)) for e in self._queues.entries.values()]
                                           + [(op.tenant, 1) for op in self._samples.ops])
