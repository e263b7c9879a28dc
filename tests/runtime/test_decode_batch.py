"""Sample requests decoded together in the continuous batch equal the same requests run alone.

The executor is driven turn by turn (`start=False`) so that requests join at chosen moments:
all at once, or while others are already decoding. Each request's tokens must be identical and
its log-probs within 1e-5 of `Engine.sample` running it alone. Also here: a bad or failing
request fails only itself, training runs between decode steps, the KV budget queues requests
and refuses one that can never fit, and an optimizer step waits for its adapter's samples.

Batching changes the row count of every matmul, and CPU GEMM kernels round differently per row
count (about 1e-6 relative); the adapters here have the magnitude of trained ones (they move the
logits by about 15%), where that stays well inside 1e-5 after dozens of tokens. Adapters many
times larger amplify it accordingly.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import pytest
import torch

from loraplane.core import errors
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import engine as engine_mod
from loraplane.runtime import kv_cache
from loraplane.runtime.decode_attention import Piece
from loraplane.runtime.executor import Executor, OptimStep, Sample

ADAPTERS = [f"ad{i}" for i in range(8)]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    torch.set_num_threads(1)
    eng = engine_mod.Engine(str(tiny_model_dir))
    for i, adapter in enumerate(ADAPTERS):
        eng.create_adapter(adapter, engine_mod.LoraSpec(rank=4 + 4 * (i % 2), seed=i))
        with torch.no_grad():
            for key, p in eng._adapters[adapter].params.items():
                if ".lora_B." in key:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(100 + i))
    return eng


def request(i: int) -> Sample:
    """Request i: its own adapter (or the base model), prompt length, stops and sampling mode."""
    g = torch.Generator().manual_seed(i)
    prompt = torch.randint(3, 259, (3 + 5 * (i % 4),), generator=g).tolist()
    modes = [
        dict(temperature=0.0, stop=[]),
        dict(temperature=1.0, seed=11 + i, stop=None),
        dict(temperature=0.7, top_k=20, seed=5, stop=["e", "a"]),
        dict(temperature=1.3, top_p=0.8, seed=i, stop=[100, 101, 102, 103, 104]),
    ]
    params = engine_mod.SamplingParams(max_tokens=6 + 3 * i, **modes[i % 4])
    adapter = None if i == 5 else ADAPTERS[i]
    return Sample(adapter, prompt, 1 + i % 3, params, prompt_logprobs=i % 2 == 1)


def executor_for(engine, **settings) -> Executor:
    ex = Executor(engine, RuntimeSettings(**settings), start=False)
    for adapter in ADAPTERS:
        ex._register(adapter, 1)
    return ex


def run_until_done(ex: Executor, futures, turns: int = 2000) -> None:
    for _ in range(turns):
        if all(f.done() for f in futures):
            return
        ex.run_once()
    raise AssertionError("requests did not finish")


def assert_same(got, alone) -> None:
    assert len(got.sequences) == len(alone.sequences)
    for s, a in zip(got.sequences, alone.sequences, strict=True):
        assert s.tokens == a.tokens and s.stop_reason == a.stop_reason
        assert max((abs(x - y) for x, y in zip(s.logprobs, a.logprobs, strict=True)), default=0.0) <= 1e-5
    if alone.prompt_logprobs is None:
        assert got.prompt_logprobs is None
    else:
        assert got.prompt_logprobs[0] is None
        for x, y in zip(got.prompt_logprobs[1:], alone.prompt_logprobs[1:], strict=True):
            assert abs(x - y) <= 1e-5


def alone_result(engine, sample: Sample):
    return engine.sample(sample.adapter_id, sample.prompt, sample.num_samples, sample.params,
                         prompt_logprobs=sample.prompt_logprobs)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_concurrent_requests_equal_each_request_alone(engine, n):
    samples = [request(i) for i in range(n)]
    ex = executor_for(engine)
    futures = [ex.submit_sample(s)[1] for s in samples]
    run_until_done(ex, futures)
    for sample, future in zip(samples, futures, strict=True):
        assert_same(future.result(0), alone_result(engine, sample))


@pytest.mark.parametrize("cut_attention", [False, True])
def test_requests_joining_a_running_batch_equal_each_request_alone(engine, monkeypatch, cut_attention):
    if cut_attention:  # rows of every length apart: the decode attention in as many chunks as it gets
        monkeypatch.setattr(engine.decoder.decode, "split_bytes", 1)
    samples = [request(i) for i in range(8)]
    ex = executor_for(engine, prefill_chunk_tokens=7)  # long prompts take several prefill steps
    futures = []
    for sample in samples:
        futures.append(ex.submit_sample(sample)[1])
        ex.run_once()
        ex.run_once()
    run_until_done(ex, futures)
    for sample, future in zip(samples, futures, strict=True):
        assert_same(future.result(0), alone_result(engine, sample))


def test_requests_that_join_where_others_left_reuse_the_cache_and_equal_each_request_alone(engine, monkeypatch):
    """Rows that leave the decode batch free room in its cache; rows that join later are laid out
    in it (`KvStore._rebuild_in_place`) instead of a new cache, moving the rows around them."""
    store = engine.decoder.decode
    joins: list[int] = []
    in_place = store._rebuild_in_place
    monkeypatch.setattr(store, "_rebuild_in_place", lambda plan, own: (
        joins.append(sum(src is not store for src, _ in plan)), in_place(plan, own))[1])
    samples = [request(i) for i in range(6)]
    for i in (6, 7):  # short enough to fit the room the others' cache has
        late = request(i)
        samples.append(dataclasses.replace(late, params=dataclasses.replace(late.params, max_tokens=8)))
    ex = executor_for(engine)
    futures = [ex.submit_sample(s)[1] for s in samples[:6]]
    while not futures[1].done():  # requests 0 and 1 (1 and 2 rows) are the shortest
        ex.run_once()
    futures += [ex.submit_sample(s)[1] for s in samples[6:]]
    run_until_done(ex, futures)
    assert any(joins), "no rows joined in place"
    for sample, future in zip(samples, futures, strict=True):
        assert_same(future.result(0), alone_result(engine, sample))


def test_requests_that_join_in_one_turn_get_their_prefill_rows_in_one_rebuild(engine, monkeypatch):
    """A client that sends many requests at once must not rebuild the prefill cache once per
    request (a cost that grows with the square of their number)."""
    store = engine.decoder.prefill
    sizes: list[int] = []
    rebuild = store.assemble
    monkeypatch.setattr(store, "assemble", lambda plan, **kw: (sizes.append(len(plan)), rebuild(plan, **kw))[1])
    samples = [request(i) for i in range(8)]
    ex = executor_for(engine)
    futures = [ex.submit_sample(s)[1] for s in samples]
    ex.run_once()
    assert sizes[0] == 8
    run_until_done(ex, futures)
    for sample, future in zip(samples, futures, strict=True):
        assert_same(future.result(0), alone_result(engine, sample))


def recorded_pieces(store, monkeypatch) -> list[tuple[Piece, ...]]:
    """The pieces of every decode step of `store` that cuts its rows or shares prompts, from now on."""
    steps: list[tuple[Piece, ...]] = []
    prepare = store.prepare
    monkeypatch.setattr(store, "prepare", lambda width, rows=None: (
        prepare(width, rows), steps.append(store.decode_chunks) if store.decode_chunks else None)[0])
    return steps


def test_a_long_prompt_among_short_ones_attends_in_chunks_and_each_request_equals_it_alone(engine, monkeypatch):
    """Rows of very different lengths are read in chunks of their own widths, not all at the
    longest (`decode_attention.row_chunks`); here every length difference is cut."""
    store = engine.decoder.decode
    monkeypatch.setattr(store, "split_bytes", 1)
    chunked = recorded_pieces(store, monkeypatch)
    g = torch.Generator().manual_seed(42)
    long = Sample(ADAPTERS[3], torch.randint(3, 259, (150,), generator=g).tolist(), 2,
                  engine_mod.SamplingParams(max_tokens=10, temperature=1.0, seed=4, stop=[]))
    samples = [request(i) for i in range(3)] + [long] + [request(i) for i in range(3, 6)]
    ex = executor_for(engine, prefill_chunk_tokens=64)
    futures = [ex.submit_sample(s)[1] for s in samples]
    run_until_done(ex, futures)
    widest = [max(c.width for c in chunks) for chunks in chunked]
    assert any(len(chunks) >= 3 and min(c.width for c in chunks) < 40 < max(widest) for chunks in chunked)
    for sample, future in zip(samples, futures, strict=True):
        assert_same(future.result(0), alone_result(engine, sample))


def test_samples_that_read_their_prompt_once_equal_each_request_alone(engine, monkeypatch):
    """A request's samples hold its prompt alike, and runs of requests with one prompt length and
    row count read each prompt once (`decode_attention.shared_runs`); here wherever that can apply,
    as requests join while others decode and rows stop early. The requests alone share nothing."""
    store = engine.decoder.decode
    monkeypatch.setattr(store, "share_bytes", 1)
    pieces = recorded_pieces(store, monkeypatch)
    g = torch.Generator().manual_seed(7)
    samples = []
    for i, (prompt, count) in enumerate([(12, 3)] * 4 + [(12, 1), (20, 2), (20, 2)]):
        base = request(i)
        samples.append(Sample(base.adapter_id, torch.randint(3, 259, (prompt,), generator=g).tolist(), count,
                              dataclasses.replace(base.params, max_tokens=8 + i), base.prompt_logprobs))
    ex = executor_for(engine)
    futures = [ex.submit_sample(s)[1] for s in samples[:4]]
    for _ in range(3):
        ex.run_once()
    futures += [ex.submit_sample(s)[1] for s in samples[4:]]
    run_until_done(ex, futures)
    runs = [p for step in pieces for p in step if p.share > 1]
    assert any(p.end - p.start >= 2 * p.share for p in runs), "no run of requests shared their prompts"
    assert {p.prompt for p in runs} == {12, 20}
    for sample, future in zip(samples, futures, strict=True):
        assert_same(future.result(0), alone_result(engine, sample))


def random_request(rng: random.Random) -> Sample:
    """A request drawn from every option the decode batch treats differently."""
    params = {"max_tokens": rng.choice([0, 1, 4, 11, 19]), "stop": rng.choice(
        [None, [], ["e"], ["ab", "x"], [100, 101, 102, 103], [rng.randrange(3, 259)]])}
    mode = rng.randrange(4)
    if mode:
        params.update(temperature=rng.choice([0.5, 1.0, 1.4]), seed=rng.randrange(1000))
        params.update([{}, {"top_k": rng.choice([1, 5])}, {"top_p": 0.6}][mode - 1])
    else:
        params.update(temperature=0.0)
    prompt = [rng.randrange(3, 259) for _ in range(rng.choice([1, 2, 9, 21, 33]))]
    return Sample(rng.choice([*ADAPTERS, None]), prompt, rng.randrange(1, 5), engine_mod.SamplingParams(**params),
                  prompt_logprobs=rng.random() < 0.3, topk_sample_logprobs=rng.choice([0, 0, 3]),
                  topk_prompt_logprobs=rng.choice([0, 0, 2]))


@pytest.mark.parametrize("seed", range(10))
def test_random_mixes_of_requests_equal_each_request_alone(engine, monkeypatch, seed):
    """Requests of random options join at random turns, with random prefill chunks, row limits and
    attention pieces (every cut, shared prompts wherever they apply), and the cache rebuilt in
    place (as on the CPU) or by gathering rows (as on a GPU): each equals itself run alone."""
    rng = random.Random(seed)
    monkeypatch.setattr(kv_cache, "_IN_PLACE", frozenset({"cpu"}) if seed % 2 else frozenset())
    store = engine.decoder.decode
    monkeypatch.setattr(store, "split_bytes", rng.choice([1, 1 << 20]))
    monkeypatch.setattr(store, "share_bytes", rng.choice([None, 1]))
    samples = [random_request(rng) for _ in range(rng.randrange(3, 9))]
    ex = executor_for(engine, prefill_chunk_tokens=rng.choice([5, 16, 512]), max_decode_rows=rng.choice([6, 64]))
    futures = []
    for sample in samples:
        futures.append(ex.submit_sample(sample)[1])
        for _ in range(rng.choice([0, 1, 3])):
            ex.run_once()
    run_until_done(ex, futures)
    for sample, future in zip(samples, futures, strict=True):
        got = future.result(0)
        alone = engine.sample(sample.adapter_id, sample.prompt, sample.num_samples, sample.params,
                              options=sample.options())
        assert_same(got, alone)
        for s, a in zip(got.sequences, alone.sequences, strict=True):
            assert (s.topk is None) == (a.topk is None)
            if a.topk is not None and len(a.tokens):
                assert (s.topk[0] == a.topk[0]).all() and abs(s.topk[1] - a.topk[1]).max() <= 1e-5


def test_a_bad_request_is_refused_alone_and_the_others_finish(engine):
    ex = executor_for(engine)
    good = [ex.submit_sample(request(i))[1] for i in range(3)]
    with pytest.raises(errors.InvalidInput) as bad_stop:
        ex.submit_sample(Sample("ad0", [5, 6], 1, engine_mod.SamplingParams(stop=[10**6])))
    assert bad_stop.value.field == "sampling_params.stop"
    with pytest.raises(errors.InvalidInput) as bad_token:
        ex.submit_sample(Sample("ad1", [5, 10**6], 1, engine_mod.SamplingParams()))
    assert bad_token.value.field == "prompt_tokens"
    run_until_done(ex, good)
    for i, future in enumerate(good):
        assert_same(future.result(0), alone_result(engine, request(i)))


def test_deleting_an_adapter_fails_its_running_samples_only(engine, tiny_model_dir):
    eng = engine_mod.Engine(str(tiny_model_dir))
    ex = Executor(eng, RuntimeSettings(), start=False)
    for adapter in ("keep", "gone"):
        ex.create_adapter(adapter, engine_mod.LoraSpec(rank=4, seed=1))
    ex.run_once()
    long = engine_mod.SamplingParams(max_tokens=40, temperature=0.0, stop=[])
    _, kept = ex.submit_sample(Sample("keep", [5, 6, 7], 2, long))
    _, doomed = ex.submit_sample(Sample("gone", [5, 6, 7], 2, long))
    for _ in range(3):
        ex.run_once()
    ex.delete_adapter("gone")
    run_until_done(ex, [kept, doomed])
    with pytest.raises(errors.NotFound):
        doomed.result(0)
    assert_same(kept.result(0), eng.sample("keep", [5, 6, 7], 2, long))


def test_kv_budget_queues_requests_that_do_not_fit_and_refuses_one_that_never_can(engine):
    per_token = engine.kv_bytes_per_token
    params = engine_mod.SamplingParams(max_tokens=20, temperature=0.0, stop=[])
    one_request = (2 + 1) * (4 + 20) * per_token  # (num_samples + prompt row) x (prompt + max_tokens)
    ex = executor_for(engine, kv_cache_bytes=one_request)
    first = ex.submit_sample(Sample("ad0", [5, 6, 7, 8], 2, params))[1]
    second = ex.submit_sample(Sample("ad1", [9, 6, 7, 8], 2, params))[1]
    ex.run_once()
    assert ex.sample_queue() == 1  # the second waits for room
    run_until_done(ex, [first, second])
    assert_same(second.result(0), engine.sample("ad1", [9, 6, 7, 8], 2, params))
    with pytest.raises(errors.InvalidInput) as too_big:
        ex.submit_sample(Sample("ad0", [5, 6, 7, 8], 3, params))
    assert "kv_cache_bytes" in too_big.value.message


def test_sample_queue_is_bounded(engine):
    ex = executor_for(engine, max_queued_samples=1)
    ex.submit_sample(request(0))
    with pytest.raises(errors.CapacityError, match="max_queued_samples"):
        ex.submit_sample(request(1))


def test_an_optimizer_step_waits_for_its_adapters_running_samples(engine, tiny_model_dir):
    eng = engine_mod.Engine(str(tiny_model_dir))
    ex = Executor(eng, RuntimeSettings(), start=False)
    ex.create_adapter("live", engine_mod.LoraSpec(rank=4, seed=1))
    ex.run_once()
    params = engine_mod.SamplingParams(max_tokens=30, temperature=0.0, stop=[])
    expected = eng.sample("live", [5, 6, 7], 1, params)
    _, sample = ex.submit_sample(Sample("live", [5, 6, 7], 1, params))
    ex.run_once()
    datum = engine_mod.Datum(torch.tensor([5, 6, 7]), {"target_tokens": torch.tensor([6, 7, 8])})
    _, fwd = ex.submit("live", 1, engine_mod.FwdBwdWork("live", [datum]))
    _, step = ex.submit("live", 2, OptimStep("live", engine_mod.AdamParams(learning_rate=0.5)))
    for _ in range(3):
        ex.run_once()
    assert fwd.done() and not step.done() and not sample.done()
    run_until_done(ex, [sample, step])
    assert_same(sample.result(0), expected)  # the weights did not move under the running sample


def test_a_training_step_finishes_while_eight_long_samples_run(engine, tiny_model_dir):
    eng = engine_mod.Engine(str(tiny_model_dir))
    ex = Executor(eng, RuntimeSettings())
    try:
        for adapter in [*ADAPTERS, "trainee"]:
            ex.create_adapter(adapter, engine_mod.LoraSpec(rank=4, seed=2)).result(10)
        long = engine_mod.SamplingParams(max_tokens=400, temperature=1.0, seed=1, stop=[])
        samples = [ex.submit_sample(Sample(a, [5, 6, 7, 8], 2, long))[1] for a in ADAPTERS]
        deadline = time.monotonic() + 10
        while eng.decoder.decode_rows < 16 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert eng.decoder.decode_rows == 16
        data = [engine_mod.Datum(torch.arange(3, 35), {"target_tokens": torch.arange(4, 36)})]
        ex.submit("trainee", 1, engine_mod.FwdBwdWork("trainee", data))
        _, step = ex.submit("trainee", 2, OptimStep("trainee", engine_mod.AdamParams()))
        step.result(30)
        assert not any(f.done() for f in samples)
        done = threading.Event()
        for f in samples:
            f.add_done_callback(lambda _: done.set() if all(x.done() for x in samples) else None)
        assert done.wait(60)
        assert all(len(seq.tokens) == 400 for f in samples for seq in f.result(0).sequences)
    finally:
        ex.close()


def test_another_adapter_training_and_snapshotting_between_decode_steps_keeps_the_stacked_weights(engine):
    """Optimizer steps and sampler snapshots of an adapter that does not decode leave the decode
    batch's stacked LoRA weights in place (`MultiLoraLinear.forget_adapter`), and the samples of
    the adapters that do decode equal each request alone."""
    engine.create_adapter("trainee", engine_mod.LoraSpec(rank=4, seed=9))
    ex = executor_for(engine)
    ex._register("trainee", 1)
    layer = next(iter(engine.store._layers.values()))
    params = [engine_mod.SamplingParams(max_tokens=25, temperature=1.0, seed=i, stop=[]) for i in range(4)]
    samples = [Sample(ADAPTERS[i], [5 + i, 6, 7, 8, 9], 2, params[i]) for i in range(4)]
    datum = engine_mod.Datum(torch.arange(3, 20), {"target_tokens": torch.arange(4, 21)})
    try:
        futures = [ex.submit_sample(s)[1] for s in samples]
        ex.run_once()
        ex.run_once()
        stacked, seq = layer._stacked, 1
        assert stacked is not None and stacked.ids == tuple(ADAPTERS[:4])
        while not all(f.done() for f in futures):
            ex.submit("trainee", seq, engine_mod.FwdBwdWork("trainee", [datum]))
            _, step = ex.submit("trainee", seq + 1, OptimStep("trainee", engine_mod.AdamParams(learning_rate=0.1)))
            ex.run_once()
            ex.run_once()
            assert step.done() and step.exception(0) is None
            engine.snapshot("trainee", f"trainee-s{seq % 3}", keep=2)
            seq += 2
            assert all(f.done() for f in futures) or layer._stacked is stacked
        for sample, future in zip(samples, futures, strict=True):
            assert_same(future.result(0), alone_result(engine, sample))
    finally:
        for adapter_id in [a for a in engine.adapter_ids() if a.startswith("trainee")]:
            engine.delete_adapter(adapter_id)


def test_a_fault_of_the_decode_step_fails_its_requests_and_the_runtime_keeps_serving(engine, monkeypatch):
    ex = executor_for(engine)
    _, doomed = ex.submit_sample(request(0))
    with monkeypatch.context() as patch:
        patch.setattr(engine.decoder, "_decode_step", lambda report: 1 / 0)
        run_until_done(ex, [doomed])
    with pytest.raises(errors.ServerError, match="ZeroDivisionError"):
        doomed.result(0)
    assert engine.decoder.idle
    _, later = ex.submit_sample(request(1))
    run_until_done(ex, [later])
    assert_same(later.result(0), alone_result(engine, request(1)))
