"""The executor: per-adapter queues and the one model thread that runs every engine call.

Callers (the runtime API, declarative training, the benchmark) submit ops from any thread or from
the asyncio loop and get a `concurrent.futures.Future` back. One thread, the model thread, owns the
engine: it is the only one that calls into it (apart from `engine.validate`, a read-only check
run at submit time so that bad input fails at once), so no engine state is ever shared between
threads and no per-adapter locks exist.

Ordering
--------
Each adapter has a `SeqQueue` (`loraplane.runtime.ops`, with the op payloads). Ops carrying the SDK's `seq_id` run in seq order, whatever order
they arrive in (the SDK sends the chunks of one forward_backward as 2, 3, then 1); a repeated
`(adapter, seq_id)` returns the first submit's request id. When the next seq never arrives, the
gap is skipped after `seq_gap_timeout_s` (the SDK skips the seq of a submit that failed for good).
`expect_seq=None` learns the first seq from the lowest one seen within `reorder_window_s`.
Ops without a seq run in arrival order.

Scheduling
----------
Every turn of the model thread: (1) control calls (create/delete/offload/load adapters), (2) the
waiting sample requests that fit the KV budget join the decode batch (`scheduling.admit_count`),
(3) one batched `engine.forward_backward` over the ready forward/backward heads of all adapters,
bounded by `max_batch_tokens`, (4) the ready non-batchable head (optim_step, save, load, snapshot)
of each adapter, (5) one step of the decode batch (`loraplane.runtime.decoding`): a prefill chunk
and one token for every decoding row. Nothing of one adapter can overtake its own earlier ops;
training waits at most one decode step, never a whole sample; an op that would change the weights
of an adapter with rows decoding waits until they finish (`scheduling.op_must_wait`).

Sampling limits: `max_queued_samples` requests wait to join (then 503, retry); `max_decode_rows`
rows and `kv_cache_bytes` of KV cache are decoded at once (then requests wait their turn); a
request over either limit alone is refused with a 400 naming it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from loraplane.core import errors, logs
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import admission, fairshare, residency, scheduling
from loraplane.runtime.metrics import RuntimeMetrics
from loraplane.runtime.ops import (
    FORWARD_KINDS,
    LoadState,
    Op,
    OptimStep,
    Sample,
    SaveSampler,
    SaveState,
    SeqQueue,
    Snapshot,
    op_kind,
    work_tokens,
)

__all__ = ["FORWARD_KINDS", "Executor", "LoadState", "Op", "OptimStep", "Sample", "SaveSampler", "SaveState",
           "Snapshot"]

log = logging.getLogger(__name__)

#: how many finished results stay retrievable by request id
MAX_RESULTS = 50_000


@dataclass
class _AdapterState:
    queue: SeqQueue
    tenant: str = ""              # whose adapter (from the gateway's submits), for fair share
    last_used: float = 0.0        # executor clock, for eviction order
    last_used_wall: float = field(default_factory=time.time)  # unix time, for AdapterInfo


class Executor:
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
        self._adapters: dict[str, _AdapterState] = {}
        self._control: deque[Op] = deque()
        self._samples: deque[Op] = deque()
        self._results: OrderedDict[str, Op] = OrderedDict()
        self._rotation = 0
        #: fair-share credit of each backlogged tenant, carried between training passes
        self._credit: dict[str, float] = {}
        self._running = 0
        self._sampling = 0  # requests in the decode batch
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._decoder = engine.decoder
        self._decoder.chunk_tokens = settings.prefill_chunk_tokens
        #: KV bytes the running sample requests may reach (`scheduling.kv_bound`), for /readyz
        self.kv_bytes_reserved = 0
        self.metrics.on_scrape(self._refresh_gauges)
        if start:
            self.start()

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
        with self._cond:
            pending = [op for op in self._results.values() if not op.future.done()]
        for op in pending:
            _settle(op.future, exc=errors.ServerError("the runtime is shutting down; retry on another runtime"))

    @property
    def alive(self) -> bool:
        """True while the model thread runs (or when the caller drives `run_once` itself)."""
        return not self._stopped and (self._thread is None or self._thread.is_alive())

    def wake(self) -> None:
        """Make the model thread re-check its queues now (tests call it after moving a fake clock)."""
        with self._cond:
            self._cond.notify_all()

    # ---- adapters (control calls run on the model thread) ----------------------------------

    def call(self, fn: Callable[[Any], Any], name: str = "call") -> Future:
        """Run `fn(engine)` on the model thread between batches; its result or error goes to the future."""
        op = Op(request_id=_new_id(), adapter_id=None, seq_id=None, kind=name, payload=fn)
        with self._cond:
            self._check_open()
            self._control.append(op)
            self._cond.notify_all()
        return op.future

    def create_adapter(self, adapter_id: str, spec: Any, expect_seq: int | None = 1) -> Future:
        """Create an adapter and its queue; fails with CapacityError when `max_adapters` are held."""

        def create(engine: Any) -> None:
            if not engine.has_adapter(adapter_id):
                if residency.free_slots(engine.training_adapter_count(), self.settings.max_adapters) == 0:
                    raise errors.CapacityError(
                        f"this runtime holds its maximum of {self.settings.max_adapters} adapters"
                    )
            engine.create_adapter(adapter_id, spec)
            self._register(adapter_id, expect_seq)
            self._make_resident({adapter_id})

        return self.call(create, "create_adapter")

    def load_adapter(self, adapter_id: str, source: str, optimizer: bool, expect_seq: int | None) -> Future:
        """Load a saved state into an adapter, creating it (and its queue) when missing."""

        def load(engine: Any) -> Any:
            if not engine.has_adapter(adapter_id):
                if residency.free_slots(engine.training_adapter_count(), self.settings.max_adapters) == 0:
                    raise errors.CapacityError(
                        f"this runtime holds its maximum of {self.settings.max_adapters} adapters"
                    )
            spec = engine.load_state(adapter_id, source, optimizer=optimizer)
            self._register(adapter_id, expect_seq)
            self._make_resident({adapter_id})
            return spec

        return self.call(load, "load_adapter")

    def delete_adapter(self, adapter_id: str) -> Future:
        """Delete an adapter; its queued ops fail with NotFound."""

        def delete(engine: Any) -> None:
            for job, exc in self._decoder.drop(adapter_id, errors.NotFound(f"adapter {adapter_id!r} was deleted")):
                self._finish(job.tag, exc=exc)
            engine.delete_adapter(adapter_id)
            with self._cond:
                state = self._adapters.pop(adapter_id, None)
            if state is not None:
                for op in state.queue.drain():
                    _settle(op.future, exc=errors.NotFound(f"adapter {adapter_id!r} was deleted"))

        return self.call(delete, "delete_adapter")

    def offload_adapter(self, adapter_id: str) -> Future:
        """Move an adapter's weights and optimizer state off the device."""

        def offload(engine: Any) -> None:
            if not engine.has_adapter(adapter_id):
                raise errors.NotFound(f"unknown adapter {adapter_id!r}")
            if engine.is_resident(adapter_id):
                engine.offload(adapter_id, to=self.settings.offload_to)

        return self.call(offload, "offload_adapter")

    def adapter_progress(self, adapter_id: str) -> tuple[int | None, float]:
        """(next seq the adapter waits for, unix time it was last used); for AdapterInfo."""
        with self._cond:
            state = self._adapters.get(adapter_id)
            if state is None:
                return None, 0.0
            return state.queue.next_seq, state.last_used_wall

    # ---- ops -------------------------------------------------------------------------------

    def submit(self, adapter_id: str, seq_id: int | None, payload: Any,
               tenant: str | None = None) -> tuple[str, Future]:
        """Queue one op of an adapter; returns (request id, future).

        `tenant` names whose adapter it is (the gateway says so on each submit); training passes
        share the model between tenants by it (`fairshare`).

        `payload` is a `FwdBwdWork` or one of the op dataclasses of `loraplane.runtime.ops`. A
        repeated `(adapter_id, seq_id)` returns the first submit's request id and future. Raises
        InvalidInput at once when the engine rejects a forward/backward, NotFound for an unknown adapter.
        """
        kind = op_kind(payload)
        if kind in FORWARD_KINDS:
            self.engine.validate(payload)
        with self._cond:
            self._check_open()
            state = self._adapters.get(adapter_id)
            if state is None:
                raise errors.NotFound(f"unknown adapter {adapter_id!r}", field="adapter_id")
            existing = state.queue.duplicate_of(seq_id)
            if existing is not None:
                return existing.request_id, existing.future
            state.queue.check_window(seq_id)
            if tenant:
                state.tenant = tenant
            if kind in FORWARD_KINDS:
                try:
                    self._check_queue_room(state.tenant, work_tokens(payload))
                except errors.TooManyRequests as exc:
                    self.metrics.rejected(state.tenant, exc.field or "max_queued_tokens")
                    raise
            op = Op(
                request_id=_new_id(), adapter_id=adapter_id, seq_id=seq_id, kind=kind, payload=payload,
                tokens=work_tokens(payload) if kind in FORWARD_KINDS else 0,
            )
            state.queue.push(op, self._clock())
            self._remember(op)
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
            try:
                admission.check_sample_room(admission.queued_tokens((_tenant_of(o), 1) for o in self._samples), tenant,
                                            per_tenant=self.settings.max_queued_samples_per_tenant)
            except errors.TooManyRequests:
                self.metrics.rejected(tenant, "max_queued_samples_per_tenant")
                raise
            if len(self._samples) >= self.settings.max_queued_samples:
                self.metrics.rejected(tenant, "max_queued_samples")
                raise errors.CapacityError(
                    f"{len(self._samples)} sample requests already wait on this runtime (max_queued_samples); "
                    "retry shortly")
            op = Op(request_id=_new_id(), adapter_id=adapter_id, seq_id=None, kind="sample", payload=payload)
            job.tag = op
            op.job = job
            op.queued_at = time.perf_counter()
            self._samples.append(op)
            self._remember(op)
            self._cond.notify_all()
        return op.request_id, op.future

    def lookup(self, request_id: str) -> Op:
        """The op of a request id (its `future` holds the result); NotFound when unknown or expired."""
        with self._cond:
            op = self._results.get(request_id)
        if op is None:
            raise errors.NotFound(f"unknown or expired request id {request_id!r}", field="request_id")
        return op

    def queue_depth(self) -> int:
        """Ops accepted and not finished yet (queued, waiting for a seq, or running)."""
        with self._cond:
            queued = sum(len(s.queue) for s in self._adapters.values())
            return queued + len(self._samples) + len(self._control) + self._running + self._sampling

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
            now = self._clock()
            control = list(self._control)
            self._control.clear()
            for state in self._adapters.values():
                state.queue.promote(now, self.settings.seq_gap_timeout_s, self._reorder_window_s)
            admitted = self._take_samples()
            batch = self._take_batch()
            singles = self._take_singles(decoding)
            self._running = len(control) + len(batch) + len(singles)
        finished = 0
        try:
            for op in control:
                self._run_single(op, lambda fn: fn(self.engine))
            for op in admitted:
                self._admit(op)
            if batch:
                self._run_batch(batch)
            for op in singles:
                self._run_single(op, self._apply_single)
            if not self._decoder.idle:
                finished += self._decode_step()
        finally:
            with self._cond:
                finished, self._running = finished + self._running, 0
                self._sampling = len(self._decoder.requests())
        return finished

    def _take_samples(self) -> list[Op]:
        """The waiting sample requests that join the decode batch this turn (under the lock), the
        tenants with the smallest share of the batch first (`fairshare.admission_order`)."""
        if not self._samples:
            return []
        if self.settings.fair_share and len(self._samples) > 1:
            running: dict[str, int] = {}
            for req in self._decoder.requests():
                tenant = _tenant_of(req.job.tag)
                running[tenant] = running.get(tenant, 0) + max(req.live, 1)
            waiting = [(_tenant_of(op), op.job.need(prefilling=True).rows) for op in self._samples]
            order = fairshare.admission_order(waiting, running, self.settings.tenant_weights)
            self._samples = deque(self._samples[i] for i in order)
        count = scheduling.admit_count(
            self._decoder.needs(), [op.job.need(prefilling=True) for op in self._samples],
            self.engine.kv_bytes_per_token, self.settings.kv_cache_bytes, self.settings.max_decode_rows)
        return [self._samples.popleft() for _ in range(count)]

    def _admit(self, op: Op) -> None:
        if op.future.done():  # cancelled while it waited
            return
        self.metrics.sample_admitted(time.perf_counter() - op.queued_at)
        try:
            if op.adapter_id is not None:
                self._make_resident({op.adapter_id})
            self._decoder.add(op.job)
        except Exception as exc:
            self._finish(op, exc=exc)

    def _decode_step(self) -> int:
        rows = self._tenant_rows()
        started = time.perf_counter()
        try:
            with torch.no_grad():
                report = self._decoder.step()
        except Exception as exc:  # a fault outside any one pass: no request may hang on it
            log.exception("decode step failed; failing the requests in the batch")
            failure = errors.ServerError(f"sampling failed: {type(exc).__name__}: {exc}")
            for job, error in self._decoder.fail_all(failure):
                self._finish(job.tag, exc=error)
            return 0
        seconds = time.perf_counter() - started
        self.metrics.model_time(rows, seconds)
        self.kv_bytes_reserved = scheduling.kv_bound(self._decoder.needs(), self.engine.kv_bytes_per_token)
        self.metrics.decode_step(report.decode_rows, report.new_tokens, report.prefill_tokens, seconds,
                                 report.ttft_s, self._decoder.kv_bytes())
        for job, outcome in report.finished:
            op = job.tag
            if not isinstance(outcome, Exception):
                try:
                    op.payload.record(self.engine, outcome)
                except Exception as exc:  # a record that cannot be kept fails its own request only
                    outcome = exc if isinstance(exc, errors.LoraplaneError) else errors.ServerError(
                        f"could not record the samples for stable_reinforce: {type(exc).__name__}: {exc}")
            if isinstance(outcome, Exception):
                self._finish(op, exc=outcome)
            else:
                self.metrics.sampled(_tenant_of(op), sum(len(seq.tokens) for seq in getattr(outcome, "sequences", ())))
                self._finish(op, result=outcome, seconds=time.perf_counter() - op.queued_at)
        return len(report.finished)

    def _has_work(self) -> bool:
        if self._control or self._samples or not self._decoder.idle:
            return True
        now = self._clock()
        for state in self._adapters.values():
            state.queue.promote(now, self.settings.seq_gap_timeout_s, self._reorder_window_s)
            if state.queue.ready:
                return True
        return False

    def _wait_timeout(self) -> float:
        deadline = min(
            (d for s in self._adapters.values()
             if (d := s.queue.deadline(self.settings.seq_gap_timeout_s, self._reorder_window_s)) is not None),
            default=None,
        )
        if deadline is None:
            return 1.0
        return max(0.001, min(1.0, deadline - self._clock()))

    def _ordered_states(self) -> list[tuple[str, _AdapterState]]:
        """Adapters in a rotating order, so no adapter always goes first in a full batch."""
        items = list(self._adapters.items())
        if not items:
            return items
        start = self._rotation % len(items)
        self._rotation += 1
        return items[start:] + items[:start]

    def _take_batch(self) -> list[Op]:
        if self.settings.fair_share:
            return self._take_fair_batch()
        budget = self.settings.max_batch_tokens
        batch: list[Op] = []
        tokens = 0
        for _adapter_id, state in self._ordered_states():
            ready = state.queue.ready
            while ready and ready[0].kind in FORWARD_KINDS:
                if batch and tokens + ready[0].tokens > budget:
                    return batch
                op = ready.popleft()
                batch.append(op)
                tokens += op.tokens
        return batch

    def _check_queue_room(self, tenant: str, tokens: int) -> None:
        """Refuse (429) work past the tenant's or the runtime's queued-token limit (under the lock):
        a tenant that floods gets told to wait instead of growing the queue without bound."""
        queued = admission.queued_tokens(
            (s.tenant, op.tokens) for s in self._adapters.values()
            for op in (*s.queue.ready, *s.queue.waiting.values()) if op.kind in FORWARD_KINDS)
        admission.check_room(queued, tenant, tokens, per_tenant=self.settings.max_queued_tokens_per_tenant,
                             total=self.settings.max_queued_tokens)

    def _take_fair_batch(self) -> list[Op]:
        """The next pass as `fairshare.plan_pass` shares it between tenants (under the lock)."""
        states = self._ordered_states()
        work = []
        for adapter_id, state in states:
            heads = []
            for op in state.queue.ready:
                if op.kind not in FORWARD_KINDS:
                    break
                heads.append(op.tokens)
            if heads:
                work.append(fairshare.ReadyWork(adapter_id, state.tenant, tuple(heads)))
        plan = fairshare.plan_pass(work, budget=self.settings.max_batch_tokens,
                                   weights=self.settings.tenant_weights, credit=self._credit)
        self._credit = plan.credit
        batch: list[Op] = []
        for adapter_id, state in states:
            for _ in range(plan.take.get(adapter_id, 0)):
                op = state.queue.ready.popleft()
                batch.append(op)
                self.metrics.tenant_tokens(state.tenant, op.tokens)
        return batch

    def _take_singles(self, decoding: set[str]) -> list[Op]:
        singles = []
        for state in self._adapters.values():
            ready = state.queue.ready
            if ready and ready[0].kind not in FORWARD_KINDS:
                head = ready[0]
                if scheduling.op_must_wait(head.kind, head.adapter_id, decoding):
                    continue
                if head.kind == "snapshot" and head.payload.sampler_id in decoding:
                    continue  # replacing a sampler's weights waits for its running samples
                singles.append(ready.popleft())
        return singles

    def _run_batch(self, batch: list[Op]) -> None:
        adapters = {op.adapter_id for op in batch}
        try:
            self._make_resident(adapters)
        except Exception as exc:
            for op in batch:
                self._finish(op, exc=exc)
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
                    self._run_batch([op])
                return
            results = [exc]
        seconds = time.perf_counter() - started
        self.metrics.batch_ran(len(batch), len(adapters), sum(op.tokens for op in batch), seconds)
        self.metrics.model_time(self._tenant_tokens(batch), seconds)
        for op, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self._finish(op, exc=result)
            else:
                self._finish(op, result=result, seconds=seconds)

    def _run_single(self, op: Op, apply: Callable[[Any], Any]) -> None:
        started = time.perf_counter()
        try:
            if op.adapter_id is not None:
                self._make_resident({op.adapter_id})
            result = apply(op.payload)
        except Exception as exc:
            self.metrics.model_time({self._op_tenant(op): 1}, time.perf_counter() - started)
            self._finish(op, exc=exc)
        else:
            self.metrics.model_time({self._op_tenant(op): 1}, time.perf_counter() - started)
            self._finish(op, result=result, seconds=time.perf_counter() - started)

    def _apply_single(self, payload: Any) -> Any:
        return payload.apply(self.engine)

    def _finish(self, op: Op, *, result: Any = None, exc: BaseException | None = None,
                seconds: float | None = None) -> None:
        token = logs.request_id.set(op.origin)
        try:
            self._settle_op(op, result=result, exc=exc, seconds=seconds)
        finally:
            logs.request_id.reset(token)

    def _settle_op(self, op: Op, *, result: Any, exc: BaseException | None, seconds: float | None) -> None:
        tenant = self._op_tenant(op)
        if op.kind in FORWARD_KINDS:
            op.payload = None  # the input tensors are not needed once done; results are kept for a while
        if exc is not None:
            outcome = "user_error" if isinstance(exc, errors.UserError) else "server_error"
            if not isinstance(exc, errors.LoraplaneError):
                log.error("%s of %s failed: %r", op.kind, op.adapter_id, exc, exc_info=exc)
            else:
                log.info("%s of %s failed: %s", op.kind, op.adapter_id, exc.message)
            self.metrics.op_finished(op.kind, outcome, tenant=tenant)
            _settle(op.future, exc=exc)
        else:
            self.metrics.op_finished(op.kind, "ok", seconds, tenant=tenant)
            log.debug("%s of %s done in %.1f ms", op.kind, op.adapter_id, (seconds or 0.0) * 1000)
            _settle(op.future, result=result)

    def _make_resident(self, needed: set[Any]) -> None:
        """Bring `needed` adapters onto the device, offloading LRU idle ones beyond the budget."""
        needed = {a for a in needed if a is not None} | self._decoder.adapters()
        now, wall = self._clock(), time.time()
        with self._cond:
            for a in needed:
                if a in self._adapters:
                    self._adapters[a].last_used = now
                    self._adapters[a].last_used_wall = wall
            last_used = {a: s.last_used for a, s in self._adapters.items()}
            busy = {a for a, s in self._adapters.items() if len(s.queue)}
        resident = {a: last_used.get(a, 0.0) for a in self.engine.adapter_ids() if self.engine.is_resident(a)}
        for adapter_id in residency.choose_evictions(resident, needed, busy, self.settings.max_resident_adapters):
            self.engine.offload(adapter_id, to=self.settings.offload_to)
        for adapter_id in needed:
            if not self.engine.is_resident(adapter_id):
                self.engine.ensure_resident(adapter_id)

    # ---- helpers ---------------------------------------------------------------------------

    def _register(self, adapter_id: str, expect_seq: int | None) -> None:
        with self._cond:
            if adapter_id not in self._adapters:
                self._adapters[adapter_id] = _AdapterState(queue=SeqQueue(expect_seq), last_used=self._clock())

    def _remember(self, op: Op) -> None:
        self._results[op.request_id] = op
        while len(self._results) > MAX_RESULTS:
            oldest_id, oldest = next(iter(self._results.items()))
            if not oldest.future.done():
                break
            del self._results[oldest_id]

    def _check_open(self) -> None:
        if self._stopped:
            raise errors.ServerError("the runtime is shutting down; retry on another runtime")

    def _refresh_gauges(self, metrics: RuntimeMetrics) -> None:
        metrics.queue_depth.set(self.queue_depth())
        ids = list(self.engine.adapter_ids())
        resident = sum(1 for a in ids if self.engine.is_resident(a))
        metrics.adapters.labels(state="resident").set(resident)
        metrics.adapters.labels(state="offloaded").set(len(ids) - resident)
        metrics.sample_queue.set(self.sample_queue())
        metrics.kv_reserved_bytes.set(self.kv_bytes_reserved)
        metrics.kv_budget_bytes.set(self.settings.kv_cache_bytes)
        metrics.tenant_queues(self._tenant_queued())

    # ---- whose work it is, for the per-tenant metrics ----------------------------------------

    def _op_tenant(self, op: Op) -> str:
        """The tenant an op works for: a sample request says so, other ops are their adapter's."""
        state = self._adapters.get(op.adapter_id) if op.adapter_id is not None else None
        return _tenant_of(op) or (state.tenant if state is not None else "")

    def _tenant_tokens(self, batch: list[Op]) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in batch:
            tenant = self._op_tenant(op)
            out[tenant] = out.get(tenant, 0) + max(op.tokens, 1)
        return out

    def _tenant_rows(self) -> dict[str, int]:
        """Rows of each tenant in the decode batch (model thread only)."""
        out: dict[str, int] = {}
        for req in self._decoder.requests():
            tenant = _tenant_of(req.job.tag)
            out[tenant] = out.get(tenant, 0) + max(req.live, 1)
        return out

    def _tenant_queued(self) -> dict[str, int]:
        """Ops of each tenant accepted and not yet running."""
        out: dict[str, int] = {}
        with self._cond:
            for state in self._adapters.values():
                if len(state.queue):
                    out[state.tenant] = out.get(state.tenant, 0) + len(state.queue)
            for op in self._samples:
                out[_tenant_of(op)] = out.get(_tenant_of(op), 0) + 1
        return out


def _new_id() -> str:
    return uuid.uuid4().hex


def _tenant_of(op: Any) -> str:
    """Whose sample request an op is ("" when the caller did not say)."""
    return getattr(getattr(op, "payload", None), "tenant", None) or ""


def _settle(future: Future, *, result: Any = None, exc: BaseException | None = None) -> None:
    """Complete a future unless a caller already cancelled it."""
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except Exception:  # cancelled between the check and the set
        pass
