"""What waits in the executor (`runtime.queues`): how queued ops are described to the turn policy
and popped once it has chosen."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from loraplane.core import errors
from loraplane.runtime.ops import Op, Snapshot
from loraplane.runtime.queues import AdapterQueues, SampleQueue
from loraplane.runtime.scheduling import KvNeed
from loraplane.runtime.turns import AdapterQueue, SingleOp


def op(kind: str, tokens: int = 0, payload: object = None, seq: int | None = None) -> Op:
    return Op(request_id=f"{kind}-{tokens}-{seq}", adapter_id="a", seq_id=seq, kind=kind, payload=payload,
              tokens=tokens)


def queues_with(*ops: Op, tenant: str = "t") -> AdapterQueues:
    queues = AdapterQueues()
    queues.register("a", None, now=0.0)
    queues.get("a").tenant = tenant
    for item in ops:
        queues.get("a").queue.push(item, now=0.0)
    return queues


@pytest.mark.parametrize(("ops", "described"), [
    ((), AdapterQueue("a", "t")),
    ((op("forward_backward", 5), op("forward", 7)), AdapterQueue("a", "t", (5, 7))),
    # the description stops at the first single op: what comes after it cannot run this turn
    ((op("forward_backward", 5), op("optim_step"), op("forward_backward", 9)),
     AdapterQueue("a", "t", (5,), SingleOp("optim_step"))),
    ((op("save_state"), op("forward_backward", 9)), AdapterQueue("a", "t", (), SingleOp("save_state"))),
    # a snapshot names the sampler whose weights it replaces
    ((op("snapshot", payload=Snapshot("a", "a-snap")),), AdapterQueue("a", "t", (), SingleOp("snapshot", "a-snap"))),
])
def test_an_adapters_ready_ops_are_described_up_to_the_first_single_op(
        ops: tuple[Op, ...], described: AdapterQueue) -> None:
    assert queues_with(*ops).describe() == (described,)


def test_ops_waiting_for_their_seq_are_not_ready() -> None:
    queues = AdapterQueues()
    queues.register("a", 1, now=0.0)
    queues.get("a").queue.push(op("forward_backward", 5, seq=2), now=0.0)
    assert queues.describe() == (AdapterQueue("a", "", ()),)
    queues.get("a").queue.push(op("forward_backward", 3, seq=1), now=0.0)
    assert queues.describe() == (AdapterQueue("a", "", (3, 5)),)


def test_taking_pops_from_the_head_in_order() -> None:
    first, second, third = op("forward_backward", 1), op("forward_backward", 2), op("optim_step")
    queues = queues_with(first, second, third)
    assert queues.take("a", 2) == [first, second]
    assert queues.take("a", 1) == [third]
    assert queues.queued() == 0


def test_an_unknown_adapter_is_named_in_the_error() -> None:
    with pytest.raises(errors.NotFound) as caught:
        AdapterQueues().get("nope")
    assert caught.value.field == "adapter_id"


def test_use_is_recorded_and_adapters_with_queued_ops_are_busy() -> None:
    queues = queues_with(op("forward_backward", 5))
    queues.register("idle", None, now=0.0)
    last_used, busy = queues.used({"idle", "unknown"}, now=7.0, wall=1000.0)
    assert last_used == {"a": 0.0, "idle": 7.0}
    assert busy == {"a"}
    assert queues.progress("idle") == (None, 1000.0)
    assert queues.progress("unknown") == (None, 0.0)


def sample_op(name: str, tenant: str) -> Op:
    job = SimpleNamespace(need=lambda prefilling: KvNeed(rows=2, final_len=4, decode_rows=1))
    return Op(request_id=name, adapter_id=None, seq_id=None, kind="sample",
              payload=SimpleNamespace(tenant=tenant), job=job)


def test_the_sample_queue_keeps_the_order_it_is_given_and_pops_from_its_front() -> None:
    samples = SampleQueue()
    a1, a2, b1 = sample_op("a1", "a"), sample_op("a2", "a"), sample_op("b1", "b")
    for item in (a1, a2, b1):
        samples.push(item, limit=10)
    assert [w.tenant for w in samples.describe()] == ["a", "a", "b"]
    assert samples.take((2, 0, 1), 1) == [b1]
    assert list(samples.ops) == [a1, a2]


def test_the_sample_queue_refuses_past_its_limit_with_a_retryable_error() -> None:
    samples = SampleQueue()
    samples.push(sample_op("a1", "a"), limit=1)
    with pytest.raises(errors.CapacityError, match="max_queued_samples"):
        samples.push(sample_op("a2", "a"), limit=1)
