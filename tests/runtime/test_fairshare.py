"""The fair-share policy of training passes (`runtime.fairshare`), as tables."""

from __future__ import annotations

import pytest

from loraplane.runtime.fairshare import ReadyWork, plan_pass


def w(adapter: str, tenant: str, *tokens: int) -> ReadyWork:
    return ReadyWork(adapter, tenant, tuple(tokens))


def shares(taken: dict[str, int], work: list[ReadyWork]) -> dict[str, int]:
    """Tokens per tenant of a plan."""
    out: dict[str, int] = {}
    for item in work:
        out[item.tenant] = out.get(item.tenant, 0) + sum(item.tokens[: taken.get(item.adapter_id, 0)])
    return out


@pytest.mark.parametrize(("work", "budget", "take"), [
    # everything fits: everything runs, whatever the tenants
    ([w("a1", "a", 10), w("a2", "a", 10), w("b1", "b", 10)], 30, {"a1": 1, "a2": 1, "b1": 1}),
    ([w("a1", "a", 5, 5, 5), w("b1", "b", 5)], 100, {"a1": 3, "b1": 1}),
    # nothing ready: an empty pass
    ([], 30, {}),
    ([w("a1", "a")], 30, {}),
    # one op larger than the budget still runs, alone
    ([w("a1", "a", 50)], 30, {"a1": 1}),
])
def test_work_conserving_when_everything_fits(work: list[ReadyWork], budget: int, take: dict[str, int]) -> None:
    assert plan_pass(work, budget=budget).take == take


def test_a_tenant_with_one_adapter_gets_half_a_full_pass_against_one_with_eight() -> None:
    work = [w(f"a{i}", "a", 100) for i in range(8)] + [w("b1", "b", 100)]
    plan = plan_pass(work, budget=200)
    assert shares(plan.take, work) == {"a": 100, "b": 100}


def test_weights_share_the_pass_three_to_one() -> None:
    work = [w(f"a{i}", "a", 10, 10, 10) for i in range(8)] + [w("b1", "b", 10, 10, 10, 10, 10, 10, 10, 10)]
    plan = plan_pass(work, budget=80, weights={"a": 3.0, "b": 1.0}, quantum=10)
    assert shares(plan.take, work) == {"a": 60, "b": 20}


def test_a_tenants_adapters_take_turns() -> None:
    work = [w("a1", "a", 10, 10, 10), w("a2", "a", 10, 10, 10), w("b1", "b", 10, 10, 10, 10, 10, 10)]
    plan = plan_pass(work, budget=40, quantum=10)
    assert plan.take == {"a1": 1, "a2": 1, "b1": 2}


def test_credit_carries_over_while_backlogged_and_is_dropped_when_idle() -> None:
    work = [w("a1", "a", 30, 30, 30), w("b1", "b", 30, 30, 30)]
    first = plan_pass(work, budget=40, quantum=10)
    assert sum(first.take.values()) == 1 and set(first.credit) == {"a", "b"}
    # the tenant that waited is owed more and goes first next time
    owed = max(first.credit, key=first.credit.get)  # type: ignore[arg-type]
    second = plan_pass(work, budget=40, quantum=10, credit=first.credit)
    assert second.take == {f"{owed}1": 1}
    # a tenant with nothing ready keeps no credit
    alone = plan_pass([w("a1", "a", 30, 30)], budget=40, quantum=10, credit={"a": 5.0, "b": 99.0})
    assert "b" not in alone.credit


@pytest.mark.parametrize(("weights", "quantum", "credit"), [
    # a takes 6 of 8 tokens in the third round; b's 6 cannot fit the 2 left, so the pass ends
    # there, b owed the rounds it waited
    ({}, 2, {"a": 0.0, "b": 6.0}),
    ({"a": 2.0}, 1, {"a": 0.0, "b": 3.0}),
])
def test_a_pass_ends_once_no_ready_op_fits_what_is_left_of_the_budget(
        weights: dict[str, float], quantum: int, credit: dict[str, float]) -> None:
    work = [w("a1", "a", 6, 6), w("b1", "b", 6, 6)]
    plan = plan_pass(work, budget=8, quantum=quantum, weights=weights)
    assert plan.take == {"a1": 1}
    assert plan.credit == credit


def test_over_many_passes_each_tenant_gets_its_weighted_share() -> None:
    credit: dict[str, float] = {}
    totals = {"a": 0, "b": 0}
    for _ in range(50):
        work = [w(f"a{i}", "a", 64) for i in range(8)] + [w("b1", "b", 64)]
        plan = plan_pass(work, budget=128, credit=credit, weights={"a": 3.0})
        credit = plan.credit
        for tenant, tokens in shares(plan.take, work).items():
            totals[tenant] += tokens
    share_a = totals["a"] / (totals["a"] + totals["b"])
    assert 0.70 <= share_a <= 0.80, totals


@pytest.mark.parametrize(("waiting", "running", "weights", "order"), [
    # arrival order when one tenant waits
    ([("a", 4), ("a", 4)], {}, {}, [0, 1]),
    # a flood of a's requests does not keep b's out: b's comes second
    ([("a", 4), ("a", 4), ("a", 4), ("b", 4)], {}, {}, [0, 3, 1, 2]),
    # the tenant with fewer rows decoding now goes first
    ([("a", 4), ("b", 4)], {"a": 8}, {}, [1, 0]),
    # by weight: a (3) may hold three times b's rows before b goes first
    ([("a", 4), ("a", 4), ("b", 4)], {"a": 8, "b": 4}, {"a": 3.0}, [0, 1, 2]),
    ([("a", 4), ("b", 4)], {"a": 16, "b": 4}, {"a": 3.0}, [1, 0]),
])
def test_sample_requests_join_the_decode_batch_tenant_by_tenant(
        waiting: list[tuple[str, int]], running: dict[str, int], weights: dict[str, float], order: list[int]) -> None:
    from loraplane.runtime.fairshare import admission_order

    assert admission_order(waiting, running, weights) == order
