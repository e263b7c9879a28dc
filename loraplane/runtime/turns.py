"""What one turn of the model thread runs: the executor's choice of what runs next, as a policy.

Callers: `Executor.run_once`, once per turn, under the executor's lock. `plan_turn` is a plain
function of a plain description of what waits (`Queued`) and of the runtime's limits (`Limits`):
no engine, no clock, no side effects, so table tests pin the policy (tests/runtime/test_turns.py).
The executor applies the answer (`Turn`): it pops the ops the plan names from its queues and runs
them in the turn's order. This is also the seam where fair share between tenants plugs in.

## The turn
Every turn runs, in this order: the control calls (all of them, always first; not planned here),
the sample requests that join the decode batch, one batched forward/backward pass, the ready
single ops (optim_step, saves, loads, snapshots), then one decode step. Training therefore waits
at most one decode step, never a whole sample, and a long sample never waits behind training.

## Policy
- Samples: waiting requests join the decode batch in arrival order, as many as fit the KV budget
  and the row limit (`scheduling.admit_count`). With fair share, the queue is first put in
  `fairshare.admission_order` (the tenant with the fewest rows for its weight goes next); the queue
  keeps that order.
- Training pass: each adapter's ready forward/backward ops at the head of its queue, the adapters
  taken in a rotating order, so that no adapter always goes first in a full pass. Without fair
  share, heads are taken in that order until the next one would pass `max_batch_tokens` (a first
  op larger than the budget runs alone). With fair share, `fairshare.plan_pass` shares the budget
  between tenants by deficit round robin on tokens, carrying each backlogged tenant's credit.
- Single ops: every adapter whose head, once the pass took its forward ops, is a single op runs
  it, unless it would change the weights of an adapter with rows decoding
  (`scheduling.op_must_wait`) or replace a sampler snapshot with rows decoding.
- Late singles: once the pass and the planned singles ran, the single ops that became ready
  meanwhile (`ready_singles`, same rules) run before the decode step: the SDK sends an optim_step
  right after its forward_backward, and waiting for the next turn would add a whole pass to it.
- Decode step: whenever the decode batch holds requests or requests join it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import fairshare, scheduling


@dataclass(frozen=True)
class SingleOp:
    """A ready op that runs alone (not a forward/backward), as far as the policy needs to know it."""

    kind: str
    #: the sampler adapter whose weights the op replaces (a snapshot's `sampler_id`), if any
    writes: str | None = None


@dataclass(frozen=True)
class AdapterQueue:
    """What one adapter has ready, in the order it must run."""

    adapter_id: str
    tenant: str = ""
    #: tokens of each ready forward/backward op at the head of the queue, head first
    forward: tuple[int, ...] = ()
    #: the ready op right after those, when it is a single op
    then: SingleOp | None = None


@dataclass(frozen=True)
class WaitingSample:
    """A sample request waiting to join the decode batch: whose, and its charge while it prefills."""

    tenant: str
    need: scheduling.KvNeed


@dataclass(frozen=True)
class Queued:
    """A plain description of what waits at the start of a turn (built by the executor under its lock)."""

    #: every adapter with a queue, in registration order (the rotation turns over all of them)
    adapters: Sequence[AdapterQueue] = ()
    #: waiting sample requests, in queue order
    samples: Sequence[WaitingSample] = ()
    #: the charge of each request in the decode batch (`Decoder.needs`)
    decoding: Sequence[scheduling.KvNeed] = ()
    #: rows each tenant decodes now (a request counts at least one)
    decoding_rows: Mapping[str, int] = field(default_factory=dict)
    #: adapters with requests in the decode batch
    decoding_adapters: frozenset[str] = frozenset()
    #: each backlogged tenant's fair-share credit, carried from the last pass
    credit: Mapping[str, float] = field(default_factory=dict)
    #: turns taken so far (where the adapters' rotation starts)
    rotation: int = 0


@dataclass(frozen=True)
class Limits:
    """The runtime's limits and policy switches that `plan_turn` applies (from `RuntimeSettings`)."""

    max_batch_tokens: int
    kv_bytes_per_token: int
    kv_cache_bytes: int
    max_decode_rows: int
    fair_share: bool = False
    tenant_weights: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: RuntimeSettings, kv_bytes_per_token: int, pass_tokens: int) -> Limits:
        """The limits of these settings, read afresh each turn (settings may change while serving).

        A turn's training batch holds at most one forward pass of the engine (`pass_tokens`, its
        `max_pass_tokens`: 1024 on a CPU, unbounded on a GPU): the engine would run a larger batch
        as several passes back to back, and another tenant's step arriving meanwhile would wait
        for all of them instead of one. Under `bench/flood.py`'s flood with the default settings
        this took the other tenant's 99th-percentile step from 1.8-1.9x its time alone to
        1.6x, and its slowest from 1.1 s to 0.5-0.7 s (its median is set by the decode steps).
        """
        return cls(max_batch_tokens=min(settings.max_batch_tokens, pass_tokens), kv_bytes_per_token=kv_bytes_per_token,
                   kv_cache_bytes=settings.kv_cache_bytes, max_decode_rows=settings.max_decode_rows,
                   fair_share=settings.fair_share, tenant_weights=settings.tenant_weights)


@dataclass(frozen=True)
class Turn:
    """The answer of `plan_turn`: what runs now."""

    #: the order the waiting samples stay in (indices into `Queued.samples`)
    sample_order: tuple[int, ...]
    #: how many of them, from the front of that order, join the decode batch now
    admit: int
    #: (adapter id, how many of its head forward/backward ops) in the pass, in the pass's order
    batch: tuple[tuple[str, int], ...]
    #: adapters whose head single op runs after the pass, in registration order
    singles: tuple[str, ...]
    #: whether a decode step runs
    decode: bool
    #: fair-share credit to carry into the next turn
    credit: dict[str, float]
    #: the rotation counter for the next turn
    rotation: int


def plan_turn(queued: Queued, limits: Limits) -> Turn:
    """Choose what this turn runs. No side effects; called by `Executor.run_once` every turn."""
    order, admit = _admission(queued, limits)
    rotated, rotation = _rotated(queued.adapters, queued.rotation)
    if limits.fair_share:
        batch, credit = _fair_batch(rotated, queued.credit, limits)
    else:
        batch, credit = _batch(rotated, limits.max_batch_tokens), dict(queued.credit)
    singles = _singles(queued.adapters, dict(batch), queued.decoding_adapters)
    decode = bool(queued.decoding) or admit > 0
    return Turn(order, admit, batch, singles, decode, credit, rotation)


def _admission(queued: Queued, limits: Limits) -> tuple[tuple[int, ...], int]:
    """The waiting samples' order and how many join now (see the module docstring)."""
    samples = queued.samples
    order = tuple(range(len(samples)))
    if limits.fair_share and len(samples) > 1:
        waiting = [(s.tenant, s.need.rows) for s in samples]
        order = tuple(fairshare.admission_order(waiting, queued.decoding_rows, limits.tenant_weights))
    admit = scheduling.admit_count(
        queued.decoding, [samples[i].need for i in order], limits.kv_bytes_per_token, limits.kv_cache_bytes,
        limits.max_decode_rows) if samples else 0
    return order, admit


def _rotated(adapters: Sequence[AdapterQueue], rotation: int) -> tuple[list[AdapterQueue], int]:
    """The adapters in this turn's rotating order, and the next turn's counter."""
    items = list(adapters)
    if not items:
        return items, rotation
    start = rotation % len(items)
    return items[start:] + items[:start], rotation + 1


def _batch(rotated: Sequence[AdapterQueue], budget: int) -> tuple[tuple[str, int], ...]:
    """Heads in rotating order until the next one would pass the token budget."""
    batch: list[tuple[str, int]] = []
    tokens = 0
    for queue in rotated:
        taken = 0
        for cost in queue.forward:
            if (batch or taken) and tokens + cost > budget:
                if taken:
                    batch.append((queue.adapter_id, taken))
                return tuple(batch)
            taken += 1
            tokens += cost
        if taken:
            batch.append((queue.adapter_id, taken))
    return tuple(batch)


def _fair_batch(rotated: Sequence[AdapterQueue], credit: Mapping[str, float],
                limits: Limits) -> tuple[tuple[tuple[str, int], ...], dict[str, float]]:
    """The pass as `fairshare.plan_pass` shares it between tenants, in rotating order."""
    work = [fairshare.ReadyWork(q.adapter_id, q.tenant, q.forward) for q in rotated if q.forward]
    plan = fairshare.plan_pass(work, budget=limits.max_batch_tokens, weights=limits.tenant_weights, credit=credit)
    batch = tuple((q.adapter_id, plan.take[q.adapter_id]) for q in rotated if plan.take.get(q.adapter_id, 0))
    return batch, plan.credit


def ready_singles(adapters: Sequence[AdapterQueue], decoding: frozenset[str]) -> tuple[str, ...]:
    """Adapters whose head op is a single op that may run now (with no pass before it). No side
    effects; `Executor.run_once` asks again once the pass ran, so that an optim_step sent while its
    forward_backward was in the pass runs in the same turn instead of after the next pass."""
    return _singles(adapters, {}, decoding)


def _singles(adapters: Sequence[AdapterQueue], taken: Mapping[str, int], decoding: frozenset[str]) -> tuple[str, ...]:
    """Adapters whose head, once the pass took its ops, is a single op that may run now."""
    out = []
    decoding_set = set(decoding)
    for queue in adapters:
        if taken.get(queue.adapter_id, 0) < len(queue.forward) or queue.then is None:
            continue  # a forward/backward op still heads the queue, or nothing is ready
        op = queue.then
        if scheduling.op_must_wait(op.kind, queue.adapter_id, decoding_set):
            continue
        if op.writes is not None and op.writes in decoding:
            continue  # replacing a sampler's weights waits for its running samples
        out.append(queue.adapter_id)
    return tuple(out)
