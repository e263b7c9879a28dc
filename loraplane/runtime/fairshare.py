"""Fair share of a runtime's training passes between tenants: which ready work goes in the next pass.

Callers: `loraplane.runtime.turns.plan_turn` on the model thread, once per turn. Everything here is
a plain function of plain data (no engine, no clock), so table tests pin the policy.

Policy
------
- Work-conserving: when all ready forward/backward work fits in the pass's token budget, all of it
  runs, whoever it belongs to.
- Otherwise deficit round robin between tenants on tokens: each round, every tenant with ready work
  earns `quantum x weight` tokens of credit and spends it on its ready ops, taking its adapters in
  turn (one op each per turn), so a tenant's share follows its weight and not its number of
  adapters. Credit carries over between passes while a tenant stays backlogged, and is dropped when
  it has nothing ready (an idle tenant does not bank time).
- The tenant owed most goes first in a round; ties go to the name, so the answer never depends on
  dict order.
- A pass never comes out empty while work waits: an op larger than the whole budget runs alone once
  its tenant's credit covers it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: rounds after which the planner stops even if credit could still grow (a guard, never reached
#: with positive weights: credit grows every round until an op that fits is paid for, and the
#: rounds end once no ready op fits what is left of the budget)
MAX_ROUNDS = 100_000


@dataclass(frozen=True)
class ReadyWork:
    """One adapter's ready forward/backward ops, in the order they must run."""

    adapter_id: str
    tenant: str
    tokens: tuple[int, ...]  #: tokens of each ready op, head first


@dataclass(frozen=True)
class Plan:
    """The answer of `plan_pass`."""

    take: dict[str, int]  #: adapter id -> how many of its head ops go in this pass
    credit: dict[str, float]  #: each backlogged tenant's credit left for the next pass


def plan_pass(work: Sequence[ReadyWork], *, budget: int, weights: Mapping[str, float] | None = None,
              credit: Mapping[str, float] | None = None, quantum: int | None = None) -> Plan:
    """Choose the ops of the next training pass. No side effects; called by `turns.plan_turn`.

    Args:
        work: every adapter with ready forward/backward ops, in the executor's rotating order
            (which breaks ties between one tenant's adapters).
        budget: the pass's token budget (`max_batch_tokens`).
        weights: tenant -> weight (missing: 1.0).
        credit: each tenant's credit carried over from the last pass.
        quantum: credit a tenant of weight 1 earns per round (default: a quarter of the budget).
    """
    weights = weights or {}
    work = [w for w in work if w.tokens]
    if sum(sum(w.tokens) for w in work) <= budget:
        return Plan({w.adapter_id: len(w.tokens) for w in work}, {})
    quantum = max(1, quantum if quantum is not None else budget // 4)
    by_tenant: dict[str, list[ReadyWork]] = {}
    for w in work:
        by_tenant.setdefault(w.tenant, []).append(w)
    left = {t: dict(credit or {}).get(t, 0.0) for t in by_tenant}
    taken = {w.adapter_id: 0 for w in work}
    turn = {t: 0 for t in by_tenant}  # next adapter of each tenant to offer an op
    used = 0
    for _ in range(MAX_ROUNDS):
        pending = [t for t in by_tenant if _has_more(by_tenant[t], taken)]
        if not pending or used >= budget or not _any_fits(work, taken, used, budget):
            break
        for tenant in pending:  # every backlogged tenant earns its round's credit, served or not
            left[tenant] += quantum * max(weights.get(tenant, 1.0), 1e-9)
        for tenant in sorted(pending, key=lambda t: (-left[t], t)):
            used = _spend(by_tenant[tenant], taken, turn, tenant, left, used, budget)
            if used >= budget:
                break
    credit_out = {t: left[t] for t in by_tenant if _has_more(by_tenant[t], taken)}
    return Plan({a: n for a, n in taken.items() if n}, credit_out)


def _has_more(queues: list[ReadyWork], taken: Mapping[str, int]) -> bool:
    return any(taken[w.adapter_id] < len(w.tokens) for w in queues)


def _any_fits(work: list[ReadyWork], taken: Mapping[str, int], used: int, budget: int) -> bool:
    """Whether some adapter's next op still fits the pass (any op fits an empty one): once none
    does, more rounds would only pile up credit that no op of this pass can spend."""
    return any(taken[w.adapter_id] < len(w.tokens) and (used == 0 or used + w.tokens[taken[w.adapter_id]] <= budget)
               for w in work)


def _spend(queues: list[ReadyWork], taken: dict[str, int], turn: dict[str, int], tenant: str,
           left: dict[str, float], used: int, budget: int) -> int:
    """Take the tenant's ops, its adapters in turn, while its credit and the budget allow; mutates
    `taken`, `turn` and `left` (the planner's own working copies). Returns the tokens used so far."""
    while True:
        took = False
        for _ in range(len(queues)):
            w = queues[turn[tenant] % len(queues)]
            turn[tenant] += 1
            n = taken[w.adapter_id]
            if n >= len(w.tokens):
                continue
            cost = w.tokens[n]
            fits = used + cost <= budget or used == 0
            if cost <= left[tenant] and fits:
                taken[w.adapter_id] = n + 1
                left[tenant] -= cost
                used += cost
                took = True
                break
        if not took or used >= budget:
            return used


def admission_order(waiting: Sequence[tuple[str, int]], running_rows: Mapping[str, int],
                    weights: Mapping[str, float] | None = None) -> list[int]:
    """The order in which waiting sample requests may join the decode batch. No side effects;
    called by `turns.plan_turn` every turn.

    `waiting` holds (tenant, rows) of each waiting request in arrival order, `running_rows` the rows
    each tenant decodes now. Each next request comes from the tenant whose rows, counted with those
    already placed before it, are fewest for its weight; a tenant's own requests keep their arrival
    order. When the batch has room for all, the order does not matter; when it is full, the tenant
    with the smallest share of it is the next one in.
    """
    weights = weights or {}
    rows = {t: float(running_rows.get(t, 0)) for t, _ in waiting}
    queues: dict[str, list[int]] = {}
    for i, (tenant, _) in enumerate(waiting):
        queues.setdefault(tenant, []).append(i)
    order: list[int] = []
    while queues:
        tenant = min(queues, key=lambda t: (rows[t] / max(weights.get(t, 1.0), 1e-9), queues[t][0]))
        i = queues[tenant].pop(0)
        order.append(i)
        rows[tenant] += waiting[i][1]
        if not queues[tenant]:
            del queues[tenant]
    return order
