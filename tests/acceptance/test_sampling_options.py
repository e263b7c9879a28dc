"""Every option of the SDK's `SamplingClient.sample`, checked against the model computed directly,
and several sampling clients sampling at once (one decode batch on the server)."""

from __future__ import annotations

import concurrent.futures

import pytest
import tinker
import torch
from transformers import AutoModelForCausalLM

from tests.acceptance.conftest import KEYS, Server
from tests.acceptance.helpers import train

PROMPT = [1, 70, 71, 72, 73, 74, 75]
TOL = 1e-4


@pytest.fixture(scope="module")
def service(server: Server):  # type: ignore[no-untyped-def]
    client = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
    yield client
    client.close("success").result()


@pytest.fixture(scope="module")
def model(server: Server) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(server.model, local_files_only=True).eval()


def next_token_logprobs(model: torch.nn.Module, tokens: list[int], temperature: float = 1.0) -> torch.Tensor:
    """Row i: log p(. | tokens[: i + 1]) of the base model, at `temperature`."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens])).logits[0].float()
    return (logits / temperature).log_softmax(-1)


def test_prompt_logprobs_topk_and_last_n_match_the_model(service: tinker.ServiceClient, server: Server, model) -> None:
    sampler = service.create_sampling_client(base_model=server.model).result()
    lp = next_token_logprobs(model, PROMPT)
    res = sampler.sample(prompt=tinker.ModelInput.from_ints(PROMPT), num_samples=1,
                         sampling_params=tinker.SamplingParams(max_tokens=1), include_prompt_logprobs=True,
                         topk_prompt_logprobs=3, prompt_logprobs_last_n=4).result()
    assert res.prompt_logprobs[:3] == [None, None, None]
    for i in range(3, len(PROMPT)):
        assert res.prompt_logprobs[i] == pytest.approx(float(lp[i - 1, PROMPT[i]]), abs=TOL)
    assert res.topk_prompt_logprobs[:3] == [None, None, None]
    for i in range(3, len(PROMPT)):
        top = lp[i - 1].topk(3)
        got = res.topk_prompt_logprobs[i]
        assert [t for t, _ in got] == top.indices.tolist()
        assert [v for _, v in got] == pytest.approx(top.values.tolist(), abs=TOL)


@pytest.mark.parametrize("sparse", [False, True])
def test_target_prompt_logprobs_match_the_model(service: tinker.ServiceClient, server: Server, model, sparse) -> None:
    sampler = service.create_sampling_client(base_model=server.model).result()
    lp = next_token_logprobs(model, PROMPT)
    ids = torch.full((len(PROMPT) - 1, 2), -1, dtype=torch.int64)
    ids[2, 0], ids[2, 1], ids[5, 1] = 100, 7, 200
    target = tinker.TensorData.from_torch_sparse(ids, pad_value=-1) if sparse else tinker.TensorData.from_torch(ids)
    res = sampler.sample(prompt=tinker.ModelInput.from_ints(PROMPT), num_samples=1,
                         sampling_params=tinker.SamplingParams(max_tokens=1), target_prompt_logprobs=target).result()
    got = res.target_prompt_logprobs.to_torch()
    got = got.to_dense() if got.is_sparse_csr else got
    assert list(got.shape) == [len(PROMPT) - 1, 2]
    for (i, j), token in [((2, 0), 100), ((2, 1), 7), ((5, 1), 200)]:
        assert float(got[i, j]) == pytest.approx(float(lp[i, token]), abs=TOL)
    assert float(got[0, 0]) == 0.0  # a -1 cell asks for nothing


def test_prompt_alt_tokens_are_draws_with_their_tempered_logprobs(service: tinker.ServiceClient, server: Server,
                                                                   model) -> None:
    sampler = service.create_sampling_client(base_model=server.model).result()
    res = sampler.sample(prompt=tinker.ModelInput.from_ints(PROMPT), num_samples=1,
                         sampling_params=tinker.SamplingParams(max_tokens=1, temperature=0.8, seed=3),
                         prompt_alt_tokens_k=4).result()
    tokens, logprobs = res.prompt_alt_tokens.tokens.to_torch(), res.prompt_alt_tokens.logprobs.to_torch()
    assert list(tokens.shape) == list(logprobs.shape) == [len(PROMPT) - 1, 4]
    tempered = next_token_logprobs(model, PROMPT, temperature=0.8)
    assert torch.allclose(logprobs, tempered[:-1].gather(-1, tokens), atol=TOL)
    again = sampler.sample(prompt=tinker.ModelInput.from_ints(PROMPT), num_samples=1,
                           sampling_params=tinker.SamplingParams(max_tokens=1, temperature=0.8, seed=3),
                           prompt_alt_tokens_k=4).result()
    assert torch.equal(again.prompt_alt_tokens.tokens.to_torch(), tokens)  # the seed makes them reproducible


def test_topk_sample_logprobs_match_the_model(service: tinker.ServiceClient, server: Server, model) -> None:
    sampler = service.create_sampling_client(base_model=server.model).result()
    res = sampler.sample(prompt=tinker.ModelInput.from_ints(PROMPT), num_samples=2,
                         sampling_params=tinker.SamplingParams(max_tokens=5, temperature=0.9, seed=5, stop=[]),
                         topk_sample_logprobs=3).result()
    for seq in res.sequences:
        lp = next_token_logprobs(model, PROMPT + seq.tokens, temperature=0.9)
        for t, token in enumerate(seq.tokens):
            row = lp[len(PROMPT) - 1 + t]
            assert seq.logprobs[t] == pytest.approx(float(row[token]), abs=TOL)
            top = row.topk(3)
            assert [i for i, _ in seq.topk_logprobs[t]] == top.indices.tolist()
            assert [v for _, v in seq.topk_logprobs[t]] == pytest.approx(top.values.tolist(), abs=TOL)


def test_bad_sampling_options_get_a_400_naming_the_field(service: tinker.ServiceClient, server: Server) -> None:
    sampler = service.create_sampling_client(base_model=server.model).result()
    short = torch.full((2, 1), 5, dtype=torch.int64)  # needs len(prompt) - 1 = 6 rows
    with pytest.raises(tinker.BadRequestError, match="target_prompt_logprobs"):
        sampler.sample(prompt=tinker.ModelInput.from_ints(PROMPT), num_samples=1,
                       sampling_params=tinker.SamplingParams(max_tokens=1),
                       target_prompt_logprobs=tinker.TensorData.from_torch(short)).result()


def test_several_sampling_clients_at_once_equal_each_alone(service: tinker.ServiceClient, server: Server) -> None:
    samplers = []
    for i in range(4):
        client = service.create_lora_training_client(base_model=server.model, rank=4, seed=20 + i).result()
        train(client, 1, lr=0.05)
        samplers.append(client.save_weights_and_get_sampling_client().result())
    params = tinker.SamplingParams(max_tokens=12, temperature=1.0, seed=9, stop=[])
    prompt = tinker.ModelInput.from_ints(PROMPT)
    alone = [s.sample(prompt=prompt, num_samples=3, sampling_params=params).result() for s in samplers]
    with concurrent.futures.ThreadPoolExecutor(len(samplers)) as pool:
        together = list(pool.map(lambda s: s.sample(prompt=prompt, num_samples=3, sampling_params=params).result(),
                                 samplers))
    for a, b in zip(alone, together, strict=True):
        for sa, sb in zip(a.sequences, b.sequences, strict=True):
            assert sa.tokens == sb.tokens
            assert sa.logprobs == pytest.approx(sb.logprobs, abs=1e-5)
