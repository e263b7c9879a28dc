"""What waits in the executor: each adapter's ops, released in the SDK's seq order, and the sample requests.

Callers: `loraplane.runtime.executor`, which pushes submitted ops, pops what a turn runs
(`loraplane.runtime.turns` chooses it) and reads the bookkeeping for residency. Everything here is
plain data driven under the executor's lock, with time passed in; nothing here runs an op.

## Ordering
Ops carrying the SDK's `seq_id` run in seq order, whatever order they arrive in (the SDK sends the
chunks of one forward_backward as 2, 3, then 1); a repeated `(adapter, seq_id)` returns the first
submit's op. When the next seq never arrives, the gap is skipped after the gap timeout (the SDK
skips the seq of a submit that failed for good). `expect_seq=None` learns the first seq from the
lowest one seen within the reorder window. Ops without a seq run in arrival order.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from loraplane.core import errors
from loraplane.runtime import admission, turns
from loraplane.runtime.ops import FORWARD_KINDS, Op

log = logging.getLogger(__name__)

#: How far a seq_id may run ahead of the next one to run, and how many seqs are remembered for
#: deduplication: the SDK keeps far fewer calls in flight than this.
MAX_SEQ_AHEAD = 4096


class SeqQueue:
    """One adapter's ops, released in seq_id order; all methods run under the executor's lock.

    `waiting` holds ops whose seq is ahead of `next_seq`; `ready` holds releasable ops in order.
    """

    def __init__(self, expect_seq: int | None) -> None:
        self.next_seq: int | None = expect_seq   # the seq released next; None = learn it
        self.waiting: dict[int, Op] = {}          # seq -> op not releasable yet
        self.ready: deque[Op] = deque()           # releasable, in order
        self.seen: dict[int, Op] = {}             # seq -> first op submitted with it (dedup)
        self.blocked_since: float | None = None   # when the head-of-line gap was first seen
        self.first_arrival: float | None = None   # first seq'd arrival while next_seq is None

    def __len__(self) -> int:
        return len(self.waiting) + len(self.ready)

    def duplicate_of(self, seq_id: int | None) -> Op | None:
        """The op first submitted with this seq, if any (a retry must not run twice)."""
        return None if seq_id is None else self.seen.get(seq_id)

    def check_window(self, seq_id: int | None) -> None:
        """Refuse a seq too far ahead of the next one to run: it could only wait out the gap
        timeout and stall this adapter's queue. Raises InvalidInput naming `seq_id`."""
        if seq_id is None or self.next_seq is None:
            return
        if seq_id - self.next_seq > MAX_SEQ_AHEAD:
            raise errors.InvalidInput(
                f"seq_id {seq_id} is {seq_id - self.next_seq} ahead of the next one this model runs "
                f"({self.next_seq}); at most {MAX_SEQ_AHEAD} calls may be ahead in flight", field="seq_id")

    def unblocks(self, seq_id: int | None) -> bool:
        """Whether `seq_id` is the one this queue waits for while later ones wait behind it: such an
        op is admitted past the queued-work limits, since the ops it releases are what fill them."""
        return seq_id is not None and seq_id == self.next_seq and bool(self.waiting)

    def push(self, op: Op, now: float) -> None:
        """Accept an op: in arrival order without a seq, else held until its turn."""
        if op.seq_id is None:
            self.ready.append(op)
            return
        self.seen[op.seq_id] = op
        if len(self.seen) > MAX_SEQ_AHEAD:
            for seq in sorted(self.seen)[: len(self.seen) - MAX_SEQ_AHEAD]:
                del self.seen[seq]
        if self.next_seq is not None and op.seq_id < self.next_seq:
            # its turn was skipped as a gap; running it late beats losing it
            log.warning("seq %d arrived after its gap was skipped; running it now", op.seq_id)
            self.ready.append(op)
            return
        self.waiting[op.seq_id] = op
        if self.next_seq is None and self.first_arrival is None:
            self.first_arrival = now
        self.promote(now, float("inf"), float("inf"))

    def promote(self, now: float, gap_timeout_s: float, reorder_window_s: float) -> None:
        """Move every op whose turn has come to `ready`, skipping gaps older than the timeout."""
        if self.next_seq is None:
            if not self.waiting or self.first_arrival is None or now - self.first_arrival < reorder_window_s:
                return
            self.next_seq = min(self.waiting)
        while True:
            while self.next_seq in self.waiting:
                self.ready.append(self.waiting.pop(self.next_seq))
                self.next_seq += 1
            if not self.waiting:
                self.blocked_since = None
                return
            if self.blocked_since is None:
                self.blocked_since = now
                return
            if now - self.blocked_since < gap_timeout_s:
                return
            skipped_to = min(self.waiting)
            log.warning("seq %d..%d never arrived within %.1fs; skipping the gap",
                        self.next_seq, skipped_to - 1, gap_timeout_s)
            self.next_seq = skipped_to
            self.blocked_since = None

    def deadline(self, gap_timeout_s: float, reorder_window_s: float) -> float | None:
        """When `promote` will next release something on its own (gap skip or learned baseline)."""
        if self.next_seq is None and self.first_arrival is not None and self.waiting:
            return self.first_arrival + reorder_window_s
        if self.waiting and self.blocked_since is not None:
            return self.blocked_since + gap_timeout_s
        return None

    def drain(self) -> list[Op]:
        """Remove and return every queued op (the adapter is going away)."""
        ops = list(self.ready) + [self.waiting[s] for s in sorted(self.waiting)]
        self.ready.clear()
        self.waiting.clear()
        return ops


@dataclass
class AdapterEntry:
    """One adapter's queue and what the executor knows about its use."""

    queue: SeqQueue
    tenant: str = ""              # whose adapter (from the gateway's submits), for fair share
    last_used: float = 0.0        # executor clock, for eviction order
    last_used_wall: float = field(default_factory=time.time)  # unix time, for AdapterInfo


class AdapterQueues:
    """Every adapter's `SeqQueue`, by adapter id in registration order; used under the executor's lock.

    The timing arguments are those of `SeqQueue.promote`: `gap_timeout_s`, how long a missing seq
    holds back the ones after it, and `reorder_window_s`, how long `expect_seq=None` waits to learn
    the first seq.
    """

    def __init__(self) -> None:
        #: adapter id -> its entry
        self.entries: dict[str, AdapterEntry] = {}

    def register(self, adapter_id: str, expect_seq: int | None, now: float) -> None:
        """Give an adapter a queue (a no-op when it has one)."""
        if adapter_id not in self.entries:
            self.entries[adapter_id] = AdapterEntry(queue=SeqQueue(expect_seq), last_used=now)

    def get(self, adapter_id: str) -> AdapterEntry:
        """The adapter's entry; NotFound naming `adapter_id` when it has no queue."""
        entry = self.entries.get(adapter_id)
        if entry is None:
            raise errors.NotFound(f"unknown adapter {adapter_id!r}", field="adapter_id")
        return entry

    def remove(self, adapter_id: str) -> AdapterEntry | None:
        return self.entries.pop(adapter_id, None)

    def queued(self) -> int:
        """Ops queued over all adapters (ready or waiting for their seq)."""
        return sum(len(e.queue) for e in self.entries.values())

    def promote(self, now: float, gap_timeout_s: float, reorder_window_s: float) -> None:
        """Release every op whose turn has come (`SeqQueue.promote`), in every queue."""
        for entry in self.entries.values():
            entry.queue.promote(now, gap_timeout_s, reorder_window_s)

    def any_ready(self, now: float, gap_timeout_s: float, reorder_window_s: float) -> bool:
        """Whether some adapter has an op ready to run now (promoting first)."""
        for entry in self.entries.values():
            entry.queue.promote(now, gap_timeout_s, reorder_window_s)
            if entry.queue.ready:
                return True
        return False

    def deadline(self, gap_timeout_s: float, reorder_window_s: float) -> float | None:
        """The soonest time a queue releases something on its own (a gap skip, a learned first seq)."""
        return min(
            (d for e in self.entries.values()
             if (d := e.queue.deadline(gap_timeout_s, reorder_window_s)) is not None),
            default=None,
        )

    def check_room(self, tenant: str, tokens: int, *, per_tenant: int, total: int) -> None:
        """Refuse (429) forward/backward work past the tenant's or the runtime's queued-token limit
        (`admission.check_room`): a tenant that floods gets told to wait instead of growing the queue."""
        queued = admission.queued_tokens(
            (e.tenant, op.tokens) for e in self.entries.values()
            for op in (*e.queue.ready, *e.queue.waiting.values()) if op.kind in FORWARD_KINDS)
        admission.check_room(queued, tenant, tokens, per_tenant=per_tenant, total=total)

    def describe(self) -> tuple[turns.AdapterQueue, ...]:
        """What each adapter has ready, as `turns.plan_turn` reads it. No side effects."""
        out = []
        for adapter_id, entry in self.entries.items():
            forward: list[int] = []
            then = None
            for op in entry.queue.ready:
                if op.kind not in FORWARD_KINDS:
                    writes = op.payload.sampler_id if op.kind == "snapshot" else None
                    then = turns.SingleOp(op.kind, writes)
                    break
                forward.append(op.tokens)
            out.append(turns.AdapterQueue(adapter_id, entry.tenant, tuple(forward), then))
        return tuple(out)

    def take(self, adapter_id: str, count: int) -> list[Op]:
        """Pop `count` ready ops from the head of the adapter's queue."""
        ready = self.entries[adapter_id].queue.ready
        return [ready.popleft() for _ in range(count)]

    def used(self, adapter_ids: Collection[str], now: float, wall: float) -> tuple[dict[str, float], set[str]]:
        """Mark adapters as used now (executor clock and unix time); returns every adapter's last use
        and the adapters with queued ops, for `residency.choose_evictions`."""
        for adapter_id in adapter_ids:
            entry = self.entries.get(adapter_id)
            if entry is not None:
                entry.last_used = now
                entry.last_used_wall = wall
        last_used = {a: e.last_used for a, e in self.entries.items()}
        return last_used, {a for a, e in self.entries.items() if len(e.queue)}

    def progress(self, adapter_id: str) -> tuple[int | None, float]:
        """(next seq the adapter waits for, unix time it was last used); (None, 0.0) when it has no queue."""
        entry = self.entries.get(adapter_id)
        return (None, 0.0) if entry is None else (entry.queue.next_seq, entry.last_used_wall)


class SampleQueue:
    """Sample requests waiting to join the decode batch, in queue order; used under the executor's lock."""

    def __init__(self) -> None:
        self.ops: deque[Op] = deque()

    def __len__(self) -> int:
        return len(self.ops)

    def push(self, op: Op, limit: int) -> None:
        """Queue a request; CapacityError (retry) while `limit` requests already wait."""
        if len(self.ops) >= limit:
            raise errors.CapacityError(
                f"{len(self.ops)} sample requests already wait on this runtime (max_queued_samples); "
                "retry shortly")
        self.ops.append(op)

    def check_room(self, tenant: str, per_tenant: int) -> None:
        """TooManyRequests (429) when `tenant` already has `per_tenant` requests waiting here."""
        admission.check_sample_room(admission.queued_tokens((op.tenant, 1) for op in self.ops), tenant,
                                    per_tenant=per_tenant)

    def describe(self) -> tuple[turns.WaitingSample, ...]:
        """Whose each waiting request is and what it holds while it prefills, as `turns.plan_turn` reads it."""
        return tuple(turns.WaitingSample(tenant_of(op), op.job.need(prefilling=True)) for op in self.ops)

    def take(self, order: Sequence[int], count: int) -> list[Op]:
        """Put the queue in `order` (indices into it) and pop the first `count` requests."""
        if tuple(order) != tuple(range(len(self.ops))):
            self.ops = deque(self.ops[i] for i in order)
        return [self.ops.popleft() for _ in range(count)]


def tenant_of(op: object) -> str:
    """Whose sample request an op is ("" when the caller did not say)."""
    return getattr(getattr(op, "payload", None), "tenant", None) or ""
