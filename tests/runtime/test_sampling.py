"""Sampling: seeds, greedy decoding, stop conditions, log-probs, snapshots, and the pure helpers."""

from __future__ import annotations

import math

import pytest
import torch

from loraplane.core import errors
from loraplane.runtime import engine as engine_mod
from loraplane.runtime import sampling

PROMPT = [1, 72, 101, 108, 108, 111]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    torch.set_num_threads(1)
    eng = engine_mod.Engine(str(tiny_model_dir))
    eng.create_adapter("tuned", engine_mod.LoraSpec(rank=4, seed=0))
    with torch.no_grad():
        for key, p in eng._adapters["tuned"].params.items():
            if ".lora_B." in key:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    return eng


def _forward_logprobs(engine, adapter_id, tokens: list[int]) -> torch.Tensor:
    """log p(tokens[i] | tokens[:i]) for i >= 1, through the training path."""
    t = torch.tensor(tokens)
    work = engine_mod.FwdBwdWork(
        adapter_id, [engine_mod.Datum(t[:-1], {"target_tokens": t[1:]})], "cross_entropy", {}, True
    )
    return engine.forward_backward([work])[0].logprobs[0]


def _greedy_by_full_forward(engine, adapter_id, prompt, n):
    tokens = list(prompt)
    segment = [engine_mod.lora.Segment(adapter_id, 0, 1)]
    for _ in range(n):
        with torch.no_grad(), engine._router.route(segment):
            logits = engine.model(input_ids=torch.tensor([tokens])).logits[0, -1]
        tokens.append(int(logits.argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("adapter_id", [None, "tuned"])
def test_greedy_sampling_with_the_kv_cache_equals_argmax_of_full_forwards(engine, adapter_id):
    params = engine_mod.SamplingParams(max_tokens=12, temperature=0.0, stop=[])
    result = engine.sample(adapter_id, PROMPT, 2, params)
    expected = _greedy_by_full_forward(engine, adapter_id, PROMPT, 12)
    for seq in result.sequences:
        assert seq.tokens == expected and seq.stop_reason == "length"
    assert result.prompt_logprobs is None


def test_top_k_one_is_greedy(engine):
    greedy = engine.sample("tuned", PROMPT, 1, engine_mod.SamplingParams(max_tokens=8, temperature=0.0, stop=[]))
    top1 = engine.sample("tuned", PROMPT, 1, engine_mod.SamplingParams(max_tokens=8, top_k=1, stop=[], seed=3))
    assert top1.sequences[0].tokens == greedy.sequences[0].tokens


def test_same_seed_reproduces_and_another_seed_differs(engine):
    params = engine_mod.SamplingParams(max_tokens=16, temperature=1.0, stop=[], seed=1234)
    a = engine.sample("tuned", PROMPT, 3, params)
    b = engine.sample("tuned", PROMPT, 3, params)
    c = engine.sample("tuned", PROMPT, 3, engine_mod.SamplingParams(max_tokens=16, stop=[], seed=4321))
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert [s.tokens for s in a.sequences] != [s.tokens for s in c.sequences]
    assert len({tuple(s.tokens) for s in a.sequences}) > 1  # the samples of one call differ


def test_sampled_logprobs_at_temperature_one_equal_the_learners_logprobs(engine):
    result = engine.sample("tuned", PROMPT, 2, engine_mod.SamplingParams(max_tokens=10, stop=[], seed=5))
    for seq in result.sequences:
        forward = _forward_logprobs(engine, "tuned", PROMPT + seq.tokens)[len(PROMPT) - 1 :]
        # Cached decode steps and one full forward are different kernels: an unlikely token's
        # log-prob (-4 and below) rounds in proportion to its size, hence the relative term.
        torch.testing.assert_close(torch.tensor(seq.logprobs), forward, rtol=1e-5, atol=1e-5)


def test_sampled_logprobs_are_under_the_tempered_distribution(engine):
    result = engine.sample("tuned", PROMPT, 1, engine_mod.SamplingParams(max_tokens=1, temperature=0.5, stop=[], seed=6))
    token = result.sequences[0].tokens[0]
    segment = [engine_mod.lora.Segment("tuned", 0, 1)]
    with torch.no_grad(), engine._router.route(segment):
        logits = engine.model(input_ids=torch.tensor([PROMPT])).logits[0, -1]
    expected = float((logits / 0.5).log_softmax(-1)[token])
    assert result.sequences[0].logprobs[0] == pytest.approx(expected, abs=1e-5)


def test_prompt_logprobs_equal_forward_logprobs_and_start_with_none(engine):
    result = engine.sample("tuned", PROMPT, 1, engine_mod.SamplingParams(max_tokens=1, seed=0), prompt_logprobs=True)
    assert result.prompt_logprobs[0] is None and len(result.prompt_logprobs) == len(PROMPT)
    forward = _forward_logprobs(engine, "tuned", PROMPT)
    torch.testing.assert_close(torch.tensor(result.prompt_logprobs[1:]), forward, rtol=0, atol=1e-5)


def test_stop_token_id_ends_the_sequence_and_is_kept(engine):
    free = _greedy_by_full_forward(engine, "tuned", PROMPT, 12)
    stop_id = free[4]
    first = free.index(stop_id)
    result = engine.sample("tuned", PROMPT, 1, engine_mod.SamplingParams(max_tokens=12, temperature=0.0, stop=[stop_id]))
    seq = result.sequences[0]
    assert seq.tokens == free[: first + 1] and seq.stop_reason == "stop"
    assert len(seq.logprobs) == len(seq.tokens)


def test_stop_string_is_matched_on_the_decoded_text(engine):
    free = _greedy_by_full_forward(engine, "tuned", PROMPT, 12)
    text_upto = [engine.tokenizer.decode(free[: i + 1]) for i in range(12)]
    stop = text_upto[6][-2:]  # the last two characters decoded by token 7
    first = next(i for i, text in enumerate(text_upto) if stop in text)
    params = engine_mod.SamplingParams(max_tokens=12, temperature=0.0, stop=stop)
    seq = engine.sample("tuned", PROMPT, 1, params).sequences[0]
    assert seq.tokens == free[: first + 1] and seq.stop_reason == "stop"


def test_default_stop_is_eos_and_empty_stop_runs_to_max_tokens(engine):
    eos = engine.eos_token_ids
    assert engine.tokenizer.eos_token_id in eos
    runs = engine.sample("tuned", PROMPT, 4, engine_mod.SamplingParams(max_tokens=20, stop=[], seed=8))
    assert all(len(s.tokens) == 20 and s.stop_reason == "length" for s in runs.sequences)
    default = engine.sample("tuned", PROMPT, 4, engine_mod.SamplingParams(max_tokens=20, seed=8))
    for seq in default.sequences:
        if seq.stop_reason == "stop":
            assert seq.tokens[-1] in eos and not set(seq.tokens[:-1]) & set(eos)
        else:
            assert len(seq.tokens) == 20 and not set(seq.tokens) & set(eos)


def test_sampler_snapshot_keeps_the_weights_of_its_moment(engine):
    engine.create_adapter("moving", engine_mod.LoraSpec(rank=2, seed=9))
    engine.snapshot("moving", "moving-snap")
    params = engine_mod.SamplingParams(max_tokens=6, temperature=0.0, stop=[])
    before = engine.sample("moving-snap", PROMPT, 1, params).sequences[0].tokens
    t = torch.tensor(PROMPT + [50] * 6)
    for _ in range(5):
        engine.forward_backward(
            [engine_mod.FwdBwdWork("moving", [engine_mod.Datum(t[:-1], {"target_tokens": t[1:]})])]
        )
        engine.optim_step("moving", engine_mod.AdamParams(learning_rate=5e-2))
    assert engine.sample("moving-snap", PROMPT, 1, params).sequences[0].tokens == before
    assert engine.sample("moving", PROMPT, 1, params).sequences[0].tokens != before
    engine.delete_adapter("moving-snap")
    engine.delete_adapter("moving")


@pytest.mark.parametrize(
    ("adapter_id", "prompt", "num_samples", "exc", "field"),
    [
        ("missing", PROMPT, 1, errors.NotFound, "adapter_id"),
        ("tuned", [1, 9999], 1, errors.InvalidInput, "prompt_tokens"),
        ("tuned", [], 1, errors.InvalidInput, "prompt_tokens"),
        ("tuned", PROMPT, 0, errors.InvalidInput, "num_samples"),
    ],
)
def test_bad_sample_requests_name_the_field(engine, adapter_id, prompt, num_samples, exc, field):
    with pytest.raises(exc) as info:
        engine.sample(adapter_id, prompt, num_samples, engine_mod.SamplingParams(max_tokens=2))
    assert info.value.field == field
    assert engine.sample("tuned", PROMPT, 1, engine_mod.SamplingParams(max_tokens=2)).sequences


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": -1}, "sampling_params.max_tokens"),
        ({"temperature": -0.1}, "sampling_params.temperature"),
        ({"temperature": math.inf}, "sampling_params.temperature"),
        ({"top_p": 0.0}, "sampling_params.top_p"),
        ({"top_p": 1.5}, "sampling_params.top_p"),
        ({"top_k": -2}, "sampling_params.top_k"),
        ({"seed": 1.5}, "sampling_params.seed"),
    ],
)
def test_bad_sampling_params_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(errors.InvalidInput) as info:
        sampling.SamplingParams(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("stop", "ids", "strings"),
    [
        (None, {2, 7}, ()),
        ([], set(), ()),
        ("</s>", set(), ("</s>",)),
        (["a", "b"], set(), ("a", "b")),
        ([5, 6], {5, 6}, ()),
    ],
)
def test_resolve_stops(stop, ids, strings):
    stops = sampling.resolve_stops(stop, [2, 7], vocab_size=100)
    assert stops.token_ids == frozenset(ids) and stops.strings == strings


@pytest.mark.parametrize("stop", [[100], [""], [1.5], 3])
def test_bad_stops_are_rejected(stop):
    with pytest.raises(errors.InvalidInput) as info:
        sampling.resolve_stops(stop, [2], vocab_size=100)
    assert info.value.field == "sampling_params.stop"


@pytest.mark.parametrize(
    ("probs", "top_k", "top_p", "kept"),
    [
        ([0.5, 0.3, 0.15, 0.05], -1, 1.0, [0, 1, 2, 3]),
        ([0.5, 0.3, 0.15, 0.05], 2, 1.0, [0, 1]),
        ([0.5, 0.3, 0.15, 0.05], -1, 0.5, [0]),
        ([0.5, 0.3, 0.15, 0.05], -1, 0.7, [0, 1]),
        ([0.05, 0.15, 0.3, 0.5], -1, 0.9, [1, 2, 3]),
        ([0.5, 0.3, 0.15, 0.05], 3, 0.6, [0, 1]),
        ([0.5, 0.3, 0.15, 0.05], -1, 0.01, [0]),
    ],
)
def test_filter_logits_keeps_top_k_and_the_nucleus(probs, top_k, top_p, kept):
    logits = torch.tensor([probs]).log()
    out = sampling.filter_logits(logits, top_k, top_p)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == kept


def _exp_noise(rows: int, vocab: int, seed: int) -> torch.Tensor:
    return sampling.uniform_to_exp(torch.empty(rows, vocab).uniform_(generator=torch.Generator().manual_seed(seed)))


def test_exp_noise_draws_tokens_in_proportion_to_their_probabilities():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    n = 40_000
    noise = _exp_noise(n, 4, seed=0)
    assert torch.isfinite(noise).all() and (noise >= 0).all()
    assert abs(noise.mean().item() - 1.0) < 0.01  # Exp(1): mean 1, here within 4 standard errors
    rows = sampling.row_params([sampling.SamplingParams(temperature=1.0)] * n, torch.device("cpu"))
    tokens, _, _ = sampling.choose_rows(probs.log().expand(n, 4), rows, noise)
    assert torch.allclose(torch.bincount(tokens, minlength=4) / n, probs, atol=0.01)


def test_exp_noise_of_a_request_does_not_depend_on_where_its_rows_sit_in_the_batch():
    """The decoder turns the whole batch's uniform draws into noise at once."""
    uniforms = torch.empty(4, 259).uniform_(generator=torch.Generator().manual_seed(3))
    alone = sampling.uniform_to_exp(uniforms.clone())
    for before in (1, 3, 5):
        batch = torch.rand(before + 4 + 2, 259)
        batch[before: before + 4] = uniforms
        assert torch.equal(sampling.uniform_to_exp(batch)[before: before + 4], alone)


def test_exp_noise_is_reproducible_from_the_seed():
    def draw(seed: int) -> torch.Tensor:
        return _exp_noise(3, 50, seed)

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_step_noise_gives_each_request_its_own_draws_greedy_rows_one_and_stopped_samples_their_turn():
    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    cpu = torch.device("cpu")
    draws = [sampling.NoiseDraw(gen(1), 3, 3), sampling.NoiseDraw(None, 2, 2),
             sampling.NoiseDraw(gen(2), 4, 2, pick=torch.tensor([1, 3]))]
    noise = sampling.step_noise(draws, 50, cpu)
    assert noise is not None and noise.shape == (7, 50)
    assert torch.equal(noise[:3], _exp_noise(3, 50, seed=1))
    assert torch.equal(noise[3:5], torch.ones(2, 50))
    assert torch.equal(noise[5:], _exp_noise(4, 50, seed=2)[[1, 3]])  # the stopped rows still drew
    assert sampling.step_noise([sampling.NoiseDraw(None, 2, 2)], 50, cpu) is None
