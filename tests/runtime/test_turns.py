"""What one turn of the model thread runs (`runtime.turns.plan_turn`), as tables."""

from __future__ import annotations

import pytest

from loraplane.runtime.scheduling import KvNeed
from loraplane.runtime.turns import AdapterQueue, Limits, Queued, SingleOp, WaitingSample, plan_turn

LIMITS = Limits(max_batch_tokens=100, kv_bytes_per_token=1, kv_cache_bytes=10_000, max_decode_rows=64)
FAIR = Limits(max_batch_tokens=200, kv_bytes_per_token=1, kv_cache_bytes=10_000, max_decode_rows=64,
              fair_share=True)


def q(adapter: str, *forward: int, then: str | None = None, writes: str | None = None,
      tenant: str = "") -> AdapterQueue:
    single = SingleOp(then, writes) if then is not None else None
    return AdapterQueue(adapter, tenant, tuple(forward), single)


def sample(tenant: str, rows: int = 2, final_len: int = 10) -> WaitingSample:
    """A waiting request of `rows - 1` samples (its prompt row is the extra one)."""
    return WaitingSample(tenant, KvNeed(rows=rows, final_len=final_len, decode_rows=rows - 1))


@pytest.mark.parametrize(("adapters", "rotation", "batch"), [
    # everything fits: every ready forward/backward head runs, adapter after adapter
    ([q("a", 10, 10), q("b", 10)], 0, (("a", 2), ("b", 1))),
    # the budget stops the pass at the first op that would pass it, even if a later one would fit
    ([q("a", 60, 60), q("b", 10)], 0, (("a", 1),)),
    ([q("a", 60), q("b", 60), q("c", 10)], 0, (("a", 1),)),
    # an op larger than the whole budget still runs, alone
    ([q("a", 150), q("b", 10)], 0, (("a", 1),)),
    # adapters with nothing ready, or a single op at the head, add nothing
    ([q("a"), q("b", then="optim_step"), q("c", 10)], 0, (("c", 1),)),
    # the rotation decides who goes first in a full pass
    ([q("a", 60), q("b", 60), q("c", 60)], 1, (("b", 1),)),
    ([q("a", 60), q("b", 60), q("c", 60)], 5, (("c", 1),)),
    ([q("a", 30), q("b", 30), q("c", 50)], 2, (("c", 1), ("a", 1))),
    ([], 3, ()),
])
def test_the_pass_takes_ready_heads_in_rotating_order_up_to_the_budget(
        adapters: list[AdapterQueue], rotation: int, batch: tuple[tuple[str, int], ...]) -> None:
    assert plan_turn(Queued(adapters=adapters, rotation=rotation), LIMITS).batch == batch


@pytest.mark.parametrize(("adapters", "rotation", "after"), [
    ([q("a"), q("b")], 0, 1),
    ([q("a"), q("b")], 7, 8),
    ([], 7, 7),  # no adapters: the rotation does not turn
])
def test_the_rotation_turns_once_per_turn_while_adapters_exist(
        adapters: list[AdapterQueue], rotation: int, after: int) -> None:
    assert plan_turn(Queued(adapters=adapters, rotation=rotation), LIMITS).rotation == after


@pytest.mark.parametrize(("adapters", "decoding", "singles"), [
    # a single op at the head runs after the pass
    ([q("a", then="optim_step"), q("b", then="save_state")], set(), ("a", "b")),
    # it runs in the same turn once the pass took every forward op before it
    ([q("a", 10, then="optim_step")], set(), ("a",)),
    # ...but not while a forward op the pass left behind still heads the queue
    ([q("a", 60, 60, then="optim_step")], set(), ()),
    # (rotation 1: b's op goes in the pass, a's does not fit after it)
    ([q("a", 60, then="save_state"), q("b", 60, then="optim_step")], set(), ("b",)),
    # an op that changes the weights of an adapter with rows decoding waits; reading ops do not
    ([q("a", then="optim_step"), q("b", then="load_state")], {"a", "b"}, ()),
    ([q("a", then="save_state"), q("b", then="snapshot", writes="b-snap")], {"a", "b"}, ("a", "b")),
    ([q("a", then="optim_step")], {"other"}, ("a",)),
    # replacing a sampler snapshot with rows decoding waits for them
    ([q("a", then="snapshot", writes="a-snap")], {"a-snap"}, ()),
    # singles go in registration order, whatever the rotation of the pass
    ([q("a", then="save_state"), q("b", then="save_state"), q("c", then="save_state")], set(), ("a", "b", "c")),
])
def test_ready_single_ops_run_unless_they_would_change_weights_being_sampled(
        adapters: list[AdapterQueue], decoding: set[str], singles: tuple[str, ...]) -> None:
    queued = Queued(adapters=adapters, decoding_adapters=frozenset(decoding), rotation=1)
    assert plan_turn(queued, LIMITS).singles == singles


@pytest.mark.parametrize(("samples", "decoding", "budget", "admit"), [
    ([], [], 10_000, 0),
    ([sample("a"), sample("b"), sample("c")], [], 10_000, 3),
    # rows x the longest length: two requests of 2 rows x 10 tokens fit 45 bytes, three do not
    ([sample("a"), sample("b"), sample("c")], [], 45, 2),
    # requests already decoding count against the budget
    ([sample("a"), sample("b")], [KvNeed(rows=3, final_len=10, decode_rows=3)], 55, 1),
    # the first that does not fit holds back those behind it
    ([sample("a", rows=5), sample("b")], [KvNeed(rows=1, final_len=10, decode_rows=1)], 55, 0),
    # a request over the budget alone still runs when the batch is empty
    ([sample("a", rows=9)], [], 45, 1),
])
def test_waiting_samples_join_in_order_while_they_fit_the_kv_budget(
        samples: list[WaitingSample], decoding: list[KvNeed], budget: int, admit: int) -> None:
    limits = Limits(max_batch_tokens=100, kv_bytes_per_token=1, kv_cache_bytes=budget, max_decode_rows=64)
    turn = plan_turn(Queued(samples=samples, decoding=decoding), limits)
    assert turn.admit == admit
    assert turn.sample_order == tuple(range(len(samples)))


@pytest.mark.parametrize(("samples", "decoding_rows", "order"), [
    # the tenant with the fewest rows decoding goes next; a tenant's own requests keep their order
    ([sample("a"), sample("a"), sample("b")], {"a": 4}, (2, 0, 1)),
    ([sample("a"), sample("b"), sample("a"), sample("b")], {}, (0, 1, 2, 3)),
    ([sample("a"), sample("a"), sample("b")], {"b": 9}, (0, 1, 2)),
    # one waiting request: nothing to reorder
    ([sample("a")], {"a": 9}, (0,)),
])
def test_with_fair_share_waiting_samples_go_fewest_rows_first(
        samples: list[WaitingSample], decoding_rows: dict[str, int], order: tuple[int, ...]) -> None:
    turn = plan_turn(Queued(samples=samples, decoding_rows=decoding_rows), FAIR)
    assert turn.sample_order == order
    assert turn.admit == len(samples)


def test_without_fair_share_waiting_samples_keep_arrival_order() -> None:
    samples = [sample("a"), sample("a"), sample("b")]
    assert plan_turn(Queued(samples=samples, decoding_rows={"a": 4}), LIMITS).sample_order == (0, 1, 2)


@pytest.mark.parametrize(("samples", "decoding", "decode"), [
    ([], [], False),
    ([sample("a")], [], True),
    ([], [KvNeed(rows=1, final_len=5, decode_rows=1)], True),
])
def test_a_decode_step_runs_while_the_decode_batch_has_requests(
        samples: list[WaitingSample], decoding: list[KvNeed], decode: bool) -> None:
    assert plan_turn(Queued(samples=samples, decoding=decoding), LIMITS).decode is decode


def test_with_fair_share_a_tenant_with_one_adapter_gets_half_a_full_pass() -> None:
    adapters = [q(f"a{i}", 100, tenant="a") for i in range(4)] + [q("b1", 100, tenant="b")]
    turn = plan_turn(Queued(adapters=adapters), FAIR)
    taken = dict(turn.batch)
    assert taken["b1"] == 1 and sum(n for a, n in taken.items() if a.startswith("a")) == 1
    # the pass keeps the rotating order, and the tenant left out is owed credit for the next one
    assert [a for a, _ in turn.batch] == [a for a in ("a0", "a1", "a2", "a3", "b1") if a in taken]
    assert set(turn.credit) == {"a"}


def test_with_fair_share_credit_is_carried_and_dropped_once_everything_fits() -> None:
    adapters = [q("a1", 150, tenant="a"), q("b1", 150, tenant="b")]
    first = plan_turn(Queued(adapters=adapters), FAIR)
    assert len(first.batch) == 1 and first.credit
    second = plan_turn(Queued(adapters=adapters, credit=first.credit, rotation=first.rotation), FAIR)
    assert {a for a, _ in first.batch + second.batch} == {"a1", "b1"}  # the other tenant goes next
    idle = plan_turn(Queued(adapters=[q("a1", 10, tenant="a")], credit=second.credit), FAIR)
    assert idle.batch == (("a1", 1),) and idle.credit == {}


def test_without_fair_share_credit_passes_through_untouched() -> None:
    turn = plan_turn(Queued(adapters=[q("a", 150), q("b", 150)], credit={"x": 5.0}), LIMITS)
    assert turn.credit == {"x": 5.0}
