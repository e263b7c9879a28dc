"""Ordering, deduplication, gap skipping, isolation and batching of the executor.

These drive `Executor.run_once` on the test thread (`start=False`) against `RecordingEngine`, an
in-test double with the engine's interface that records every call, so each assertion is about the
executor's decisions alone. Numerical equivalence with the real engine is in
test_threaded_equivalence.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from loraplane.core import errors
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import turns
from loraplane.runtime.decoding import SampleJob, StepReport
from loraplane.runtime.executor import Executor, OptimStep, Sample
from loraplane.runtime.sampling import SamplingParams, Stops


@dataclass
class FakeDatum:
    tokens: list[int]


@dataclass
class FakeWork:
    adapter_id: str
    tag: str
    data: list[FakeDatum] = field(default_factory=lambda: [FakeDatum([1, 2, 3, 4])])
    forward_only: bool = False
    loss_fn: str = "cross_entropy"
    loss_config: dict = field(default_factory=dict)


class RecordingDecoder:
    """The decode batch interface: every added request finishes at the next step, answering "sampled"."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.jobs: list = []
        self.chunk_tokens = 0

    @property
    def idle(self) -> bool:
        return not self.jobs

    decode_rows = 0

    def requests(self):
        return [SimpleNamespace(job=job, live=job.num_samples) for job in self.jobs]

    def needs(self):
        return [job.need(prefilling=True) for job in self.jobs]

    def adapters(self):
        return {job.adapter_id for job in self.jobs if job.adapter_id is not None}

    def add(self, job) -> None:
        self.jobs.append(job)

    def drop(self, adapter_id, exc):
        gone = [job for job in self.jobs if job.adapter_id == adapter_id]
        self.jobs = [job for job in self.jobs if job.adapter_id != adapter_id]
        return [(job, exc) for job in gone]

    def kv_bytes(self) -> int:
        return 0

    def step(self):
        for job in self.jobs:
            self.log.append(("sample", str(job.adapter_id), str(job.prompt)))
        report = StepReport(finished=[(job, "sampled") for job in self.jobs])
        self.jobs = []
        return report


class RecordingEngine:
    """The engine interface, recording calls; works tagged "explode" fail inside the batch."""

    kv_bytes_per_token = 1
    max_pass_tokens = 1 << 62  # the engine runs any batch as one pass (as on a GPU)

    def __init__(self) -> None:
        self.adapters: dict[str, bool] = {}  # id -> resident
        self.log: list[tuple[str, str, str]] = []  # (call, adapter, tag)
        self.fwd_calls: list[list[str]] = []
        self.offloaded: list[str] = []
        self.decoder = RecordingDecoder(self.log)

    def prepare_sample(self, adapter_id, prompt, num_samples, params, options):
        return SampleJob(adapter_id, list(prompt), num_samples, params or SamplingParams(), Stops(frozenset(), ()),
                         options)

    def create_adapter(self, adapter_id, spec):
        self.adapters.setdefault(adapter_id, True)

    def delete_adapter(self, adapter_id):
        if adapter_id not in self.adapters:
            raise errors.NotFound(f"unknown adapter {adapter_id!r}")
        del self.adapters[adapter_id]

    def has_adapter(self, adapter_id):
        return adapter_id in self.adapters

    def adapter_ids(self):
        return list(self.adapters)

    def training_adapter_count(self):
        return len(self.adapters)

    def is_resident(self, adapter_id):
        return self.adapters[adapter_id]

    def ensure_resident(self, adapter_id):
        self.adapters[adapter_id] = True

    def offload(self, adapter_id, to="host"):
        self.adapters[adapter_id] = False
        self.offloaded.append(adapter_id)

    def validate(self, work):
        if work.tag == "invalid":
            raise errors.InvalidInput("target_tokens has the wrong shape", field="data[0].target_tokens")
        if work.adapter_id not in self.adapters:
            raise errors.InvalidInput(f"unknown adapter {work.adapter_id!r}", field="model_id")

    def forward_backward(self, works):
        self.fwd_calls.append([f"{w.adapter_id}:{w.tag}" for w in works])
        if any(w.tag == "crash" for w in works):
            raise RuntimeError("engine crashed on this batch")
        out = []
        for w in works:
            self.log.append(("fwd", w.adapter_id, w.tag))
            out.append(RuntimeError("boom") if w.tag == "explode" else f"result:{w.adapter_id}:{w.tag}")
        return out

    def optim_step(self, adapter_id, params):
        self.log.append(("optim", adapter_id, str(params)))
        if params == "explode":
            raise errors.InvalidInput("learning_rate must be > 0", field="adam_params.learning_rate")
        return {"grad_norm:mean": 1.0}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_executor(engine=None, clock=None, adapters=("a",), expect_seq=1, **settings) -> Executor:
    engine = engine or RecordingEngine()
    settings.setdefault("seq_gap_timeout_s", 5.0)
    ex = Executor(engine, RuntimeSettings(**settings), clock=clock or FakeClock(), start=False)
    for a in adapters:
        ex.create_adapter(a, spec=None, expect_seq=expect_seq)
    ex.run_once()
    return ex


def fwd_order(engine: RecordingEngine, adapter: str) -> list[str]:
    return [tag for call, a, tag in engine.log if call == "fwd" and a == adapter]


def test_out_of_order_chunks_run_in_seq_order():
    ex = make_executor()
    futures = {s: ex.submit("a", s, FakeWork("a", f"s{s}"))[1] for s in (2, 3)}
    ex.run_once()
    assert ex.engine.log == []  # seq 1 has not arrived: nothing may run
    futures[1] = ex.submit("a", 1, FakeWork("a", "s1"))[1]
    ex.run_once()
    assert fwd_order(ex.engine, "a") == ["s1", "s2", "s3"]
    assert [futures[s].result(0) for s in (1, 2, 3)] == ["result:a:s1", "result:a:s2", "result:a:s3"]


def test_optim_step_waits_for_the_forward_backward_before_it():
    ex = make_executor()
    _, opt = ex.submit("a", 2, OptimStep("a", "adam"))
    _, fb = ex.submit("a", 1, FakeWork("a", "s1"))
    ex.run_once()
    assert ex.engine.log == [("fwd", "a", "s1"), ("optim", "a", "adam")]
    assert opt.result(0) == {"grad_norm:mean": 1.0}


def test_repeated_seq_returns_the_first_request_id_and_runs_once():
    ex = make_executor()
    rid1, fut1 = ex.submit("a", 1, FakeWork("a", "first"))
    rid2, fut2 = ex.submit("a", 1, FakeWork("a", "retry"))
    ex.run_once()
    ex.run_once()
    assert rid1 == rid2 and fut1 is fut2
    assert fwd_order(ex.engine, "a") == ["first"]
    rid3, _ = ex.submit("a", 1, FakeWork("a", "late retry"))
    assert rid3 == rid1 and ex.queue_depth() == 0


def test_gap_is_skipped_after_the_timeout_and_not_before():
    clock = FakeClock()
    ex = make_executor(clock=clock, seq_gap_timeout_s=5.0)
    _, fut = ex.submit("a", 2, FakeWork("a", "s2"))
    ex.run_once()
    clock.now += 4.9
    ex.run_once()
    assert not fut.done()
    clock.now += 0.2
    ex.run_once()
    assert fut.result(0) == "result:a:s2"
    # the missing seq arriving late still runs rather than being lost
    _, late = ex.submit("a", 1, FakeWork("a", "s1"))
    ex.run_once()
    assert late.result(0) == "result:a:s1"


def test_unknown_baseline_is_learned_from_the_lowest_seq_in_the_reorder_window():
    clock = FakeClock()
    ex = make_executor(clock=clock, expect_seq=None)
    ex.submit("a", 8, FakeWork("a", "s8"))
    ex.submit("a", 6, FakeWork("a", "s6"))
    ex.run_once()
    assert ex.engine.log == []
    clock.now += 1.0
    ex.run_once()
    assert fwd_order(ex.engine, "a") == ["s6"]  # 7 is a gap now
    ex.submit("a", 7, FakeWork("a", "s7"))
    ex.run_once()
    assert fwd_order(ex.engine, "a") == ["s6", "s7", "s8"]


def test_ops_without_seq_run_in_arrival_order():
    ex = make_executor()
    ex.submit("a", None, FakeWork("a", "x"))
    ex.submit("a", None, OptimStep("a", "adam"))
    ex.submit("a", None, FakeWork("a", "y"))
    for _ in range(3):
        ex.run_once()
    assert [(c, t) for c, _, t in ex.engine.log] == [("fwd", "x"), ("optim", "adam"), ("fwd", "y")]


def test_ops_of_different_adapters_share_one_engine_call():
    ex = make_executor(adapters=("a", "b", "c", "d"))
    futures = [ex.submit(a, 1, FakeWork(a, "s1"))[1] for a in ("a", "b", "c", "d")]
    ex.run_once()
    assert len(ex.engine.fwd_calls) == 1
    assert sorted(ex.engine.fwd_calls[0]) == ["a:s1", "b:s1", "c:s1", "d:s1"]
    assert all(f.result(0).startswith("result:") for f in futures)


def test_batch_respects_max_batch_tokens():
    ex = make_executor(adapters=("a", "b", "c"), max_batch_tokens=8)  # each work has 4 tokens
    for a in ("a", "b", "c"):
        ex.submit(a, 1, FakeWork(a, "s1"))
    ex.run_once()
    ex.run_once()
    assert [len(call) for call in ex.engine.fwd_calls] == [2, 1]


def test_failing_work_fails_only_its_own_future():
    ex = make_executor(adapters=("a", "b"))
    _, bad = ex.submit("a", 1, FakeWork("a", "explode"))
    _, good = ex.submit("b", 1, FakeWork("b", "s1"))
    _, bad_opt = ex.submit("a", 2, OptimStep("a", "explode"))
    _, good_opt = ex.submit("b", 2, OptimStep("b", "adam"))
    ex.run_once()
    with pytest.raises(RuntimeError, match="boom"):
        bad.result(0)
    with pytest.raises(errors.InvalidInput):
        bad_opt.result(0)
    assert good.result(0) == "result:b:s1" and good_opt.result(0) == {"grad_norm:mean": 1.0}
    _, after = ex.submit("a", 3, FakeWork("a", "s3"))
    ex.run_once()
    assert after.result(0) == "result:a:s3"


def test_engine_crash_on_a_batch_is_isolated_to_the_culprit():
    ex = make_executor(adapters=("a", "b"))
    _, bad = ex.submit("a", 1, FakeWork("a", "crash"))
    _, good = ex.submit("b", 1, FakeWork("b", "s1"))
    ex.run_once()
    with pytest.raises(RuntimeError, match="crashed"):
        bad.result(0)
    assert good.result(0) == "result:b:s1"


def test_invalid_work_is_rejected_at_submit():
    ex = make_executor()
    with pytest.raises(errors.InvalidInput) as info:
        ex.submit("a", 1, FakeWork("a", "invalid"))
    assert info.value.field == "data[0].target_tokens"
    with pytest.raises(errors.NotFound):
        ex.submit("nobody", 1, OptimStep("nobody", "adam"))


def test_sampling_interleaves_with_training():
    ex = make_executor()
    for s in range(1, 5):
        ex.submit("a", s, FakeWork("a", f"s{s}") if s % 2 else OptimStep("a", "adam"))
    _, sample = ex.submit_sample(Sample(None, [1, 2], 1, None))
    ex.run_once()
    assert sample.result(0) == "sampled"
    assert ex.queue_depth() == 2  # s3 and s4 are still queued: the sample did not wait for them


def test_adapters_beyond_the_resident_budget_are_offloaded_lru_first():
    clock = FakeClock()
    ex = make_executor(clock=clock, adapters=(), max_resident_adapters=2)
    for a in ("a", "b", "c"):
        clock.now += 1
        ex.create_adapter(a, spec=None)
        ex.run_once()
    assert ex.engine.offloaded == ["a"]
    clock.now += 1
    ex.submit("a", 1, FakeWork("a", "s1"))
    ex.run_once()
    assert ex.engine.offloaded == ["a", "b"] and ex.engine.is_resident("a")


def test_capacity_is_max_adapters():
    ex = make_executor(adapters=("a",), max_adapters=1)
    fut = ex.create_adapter("b", spec=None)
    ex.run_once()
    with pytest.raises(errors.CapacityError):
        fut.result(0)


def test_deleting_an_adapter_fails_its_queued_ops():
    ex = make_executor()
    _, waiting = ex.submit("a", 2, FakeWork("a", "s2"))
    ex.delete_adapter("a")
    ex.run_once()
    with pytest.raises(errors.NotFound):
        waiting.result(0)


def test_model_thread_serves_submissions_from_many_threads():
    engine = RecordingEngine()
    ex = Executor(engine, RuntimeSettings(), start=True)
    try:
        for a in ("a", "b", "c"):
            ex.create_adapter(a, spec=None).result(5)

        def client(adapter: str) -> None:
            futures = []
            for s in range(1, 21):
                op = FakeWork(adapter, f"s{s}") if s % 2 else OptimStep(adapter, f"adam{s}")
                futures.append(ex.submit(adapter, s, op)[1])
            for f in futures:
                f.result(5)

        threads = [threading.Thread(target=client, args=(a,)) for a in ("a", "b", "c")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        for a in ("a", "b", "c"):
            mine = [(c, t) for c, ad, t in engine.log if ad == a]
            assert mine == [("fwd", f"s{s}") if s % 2 else ("optim", f"adam{s}") for s in range(1, 21)]
    finally:
        ex.close()


def test_closed_executor_rejects_and_fails_pending_ops():
    ex = make_executor()
    _, waiting = ex.submit("a", 2, FakeWork("a", "s2"))
    ex.close()
    with pytest.raises(errors.ServerError):
        waiting.result(0)
    with pytest.raises(errors.ServerError):
        ex.submit("a", 3, FakeWork("a", "s3"))


def test_model_thread_skips_a_gap_when_woken_after_the_clock_passes_the_timeout():
    clock = FakeClock()
    ex = Executor(RecordingEngine(), RuntimeSettings(seq_gap_timeout_s=5.0), clock=clock, start=True)
    try:
        ex.create_adapter("a", spec=None).result(5)
        _, fut = ex.submit("a", 3, FakeWork("a", "s3"))
        clock.now += 1.0
        ex.wake()
        assert not fut.done()
        clock.now += 5.0
        ex.wake()
        assert fut.result(5) == "result:a:s3"
    finally:
        ex.close()


def test_finished_forward_backward_drops_its_input_tensors():
    ex = make_executor()
    rid, fut = ex.submit("a", 1, FakeWork("a", "s1"))
    ex.run_once()
    assert fut.result(0) == "result:a:s1" and ex.lookup(rid).payload is None


@pytest.mark.parametrize(("fair_share", "weights", "b_share"), [
    (True, {}, (0.45, 0.55)),            # equal weights: B's one adapter gets half the passes' tokens
    (True, {"a": 3.0}, (0.20, 0.30)),    # 3:1 for A
    (False, {}, (0.0, 0.2)),             # rotation over adapters: B gets about 1/9
])
def test_training_passes_share_the_model_between_tenants_not_adapters(
        fair_share: bool, weights: dict[str, float], b_share: tuple[float, float]) -> None:
    """Tenant A has 8 adapters, B one, all backlogged; a pass holds the work of two adapters."""
    adapters = [f"a{i}" for i in range(8)] + ["b0"]
    ex = make_executor(adapters=adapters, max_batch_tokens=8, fair_share=fair_share, tenant_weights=weights)
    for step in range(40):
        for adapter in adapters:
            ex.submit(adapter, step + 1, FakeWork(adapter, f"s{step}"), tenant=adapter[0])
    for _ in range(40):  # both stay backlogged for all of these passes
        ex.run_once()
    ran = [item.split(":")[0] for call in ex.engine.fwd_calls for item in call]
    share = sum(1 for a in ran if a == "b0") / len(ran)
    assert b_share[0] <= share <= b_share[1], (share, len(ran))
    assert all(len(call) <= 2 for call in ex.engine.fwd_calls)


def test_a_tenant_flooding_the_queue_gets_429_and_another_tenant_gets_in():
    ex = make_executor(adapters=("a1", "b1"), max_queued_tokens_per_tenant=12, max_queued_tokens=16)
    for seq in range(1, 4):  # 3 works of 4 tokens: at the tenant's limit
        ex.submit("a1", seq, FakeWork("a1", f"s{seq}"), tenant="a")
    with pytest.raises(errors.TooManyRequests, match="tenant 'a' has 12 tokens"):
        ex.submit("a1", 4, FakeWork("a1", "s4"), tenant="a")
    ex.submit("b1", 1, FakeWork("b1", "s1"), tenant="b")  # the other tenant is admitted
    ex.run_once()
    ex.submit("a1", 4, FakeWork("a1", "s4"), tenant="a")  # room again once the queue ran


def test_the_seq_a_full_queue_waits_for_is_admitted_past_the_tenants_limit():
    ex = make_executor(adapters=("a1",), max_queued_tokens_per_tenant=12, max_queued_tokens=16)
    for seq in range(2, 5):  # seq 1 was refused elsewhere; 2..4 wait behind it and fill the limit
        ex.submit("a1", seq, FakeWork("a1", f"s{seq}"), tenant="a")
    with pytest.raises(errors.TooManyRequests):
        ex.submit("a1", 5, FakeWork("a1", "s5"), tenant="a")
    ex.submit("a1", 1, FakeWork("a1", "s1"), tenant="a")  # the gap's resend releases the queue
    ex.run_once()
    assert fwd_order(ex.engine, "a1") == ["s1", "s2", "s3", "s4"]


def test_an_optim_step_sent_while_its_forward_backward_runs_finishes_in_the_same_turn():
    ex = make_executor()
    late = {}
    forward = ex.engine.forward_backward

    def forward_then_optim_arrives(works):
        late["optim"] = ex.submit("a", 2, OptimStep("a", "adam"))[1]  # sent by the SDK meanwhile
        return forward(works)

    ex.engine.forward_backward = forward_then_optim_arrives
    ex.submit("a", 1, FakeWork("a", "s1"))
    assert ex.run_once() == 2
    assert ex.engine.log == [("fwd", "a", "s1"), ("optim", "a", "adam")]
    assert late["optim"].result(0) == {"grad_norm:mean": 1.0}


def test_a_turn_holds_one_engine_pass_so_another_tenants_step_waits_for_one_pass_not_all():
    engine = RecordingEngine()
    engine.max_pass_tokens = 8  # two works of 4 tokens (the batch budget, 16384, would hold all six)
    ex = make_executor(engine=engine, adapters=("b1", "a1"), fair_share=True)
    for seq in range(1, 7):
        ex.submit("b1", seq, FakeWork("b1", f"s{seq}"), tenant="b")
    ex.run_once()
    ex.submit("a1", 1, FakeWork("a1", "s1"), tenant="a")  # arrives while bob's first pass runs
    ex.run_once()
    assert [[item.split(":")[0] for item in call] for call in engine.fwd_calls[:2]] == [["b1", "b1"], ["a1", "b1"]]


def test_a_turns_batch_budget_is_the_smaller_of_the_setting_and_one_engine_pass():
    settings = RuntimeSettings(max_batch_tokens=4096)
    assert turns.Limits.of(settings, 1, pass_tokens=1024).max_batch_tokens == 1024  # a CPU engine
    assert turns.Limits.of(settings, 1, pass_tokens=1 << 62).max_batch_tokens == 4096  # a GPU engine
