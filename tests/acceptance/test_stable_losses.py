"""stable_reinforce and gspo through the official SDK: recorded sampling, provenance, documented errors."""

from __future__ import annotations

import math

import pytest
import tinker
from tinker import types

from tests.acceptance.conftest import KEYS, Server

PROMPT = [1, 70, 71, 72]


@pytest.fixture(scope="module")
def service(server: Server):  # type: ignore[no-untyped-def]
    client = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
    yield client
    client.close("success").result()


def _datum(seq: types.SampledSequence, advantage: float, *, provenance: bool = True) -> types.Datum:
    sampled = list(seq.tokens)
    full = PROMPT + sampled
    n_prompt_targets = len(PROMPT) - 1
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(full[:-1]),
        loss_fn_inputs={
            "target_tokens": full[1:],
            "logprobs": [0.0] * n_prompt_targets + list(seq.logprobs or []),
            "advantages": [0.0] * n_prompt_targets + [advantage] * len(sampled),
            "sequence_ratio_mask": [0.0] * n_prompt_targets + [1.0] * len(sampled),
        },
    )
    if not provenance:
        return datum
    sid = seq.sequence_id
    return datum.with_provenance(
        model_input=[types.PromptProvenanceSpan(sequence_id=sid, length=len(PROMPT)),
                     types.SampledProvenanceSpan(sequence_id=sid, length=len(sampled) - 1)],
        loss_fn_inputs=[types.PromptProvenanceSpan(sequence_id=sid, offset=1, length=n_prompt_targets),
                        types.SampledProvenanceSpan(sequence_id=sid, length=len(sampled))],
    )


def _sample(client: tinker.SamplingClient) -> list[types.SampledSequence]:
    params = tinker.SamplingParams(max_tokens=4, temperature=1.0, seed=11)
    res = client.sample(prompt=types.ModelInput.from_ints(PROMPT), num_samples=2, sampling_params=params).result()
    return [s for s in res.sequences if len(s.tokens) >= 2]


def test_stable_reinforce_trains_on_recorded_sequences(service: tinker.ServiceClient, server: Server) -> None:
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=21).result()
    sampler = client.save_weights_and_get_sampling_client(record_stability_info=True).result()
    seqs = _sample(sampler)
    assert seqs and len({s.sequence_id for s in seqs}) == len(seqs)
    data = [_datum(s, 1.0 if i == 0 else -1.0) for i, s in enumerate(seqs)]
    out = client.forward_backward(data, "stable_reinforce", loss_fn_config={"kl_coeff": 0.1}).result()
    client.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
    assert math.isfinite(out.metrics["loss:sum"])
    # On-policy (no step between sampling and training) the ratio is 1, so with kl_coeff the loss is
    # the REINFORCE term alone: -sum(A * lp) over the sampled tokens.
    expected = 0.0
    for datum, o in zip(data, out.loss_fn_outputs, strict=True):
        lp = o["logprobs"].tolist()
        adv = datum.loss_fn_inputs["advantages"].tolist()
        expected -= sum(a * x for a, x in zip(adv, lp, strict=True))
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-3, abs=1e-3)


def test_stable_reinforce_refuses_missing_or_foreign_provenance(service: tinker.ServiceClient, server: Server) -> None:
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=22).result()
    unrecorded = _sample(client.save_weights_and_get_sampling_client().result())
    with pytest.raises(tinker.BadRequestError, match="provenance"):
        client.forward_backward([_datum(unrecorded[0], 1.0, provenance=False)], "stable_reinforce").result()
    with pytest.raises(tinker.BadRequestError, match="no recorded sequence"):
        client.forward_backward([_datum(unrecorded[0], 1.0)], "stable_reinforce").result()
    other = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
    try:
        foreign = _sample(other.create_lora_training_client(base_model=server.model, rank=4, seed=23).result()
                          .save_weights_and_get_sampling_client(record_stability_info=True).result())
    finally:
        other.close("success").result()
    with pytest.raises(tinker.BadRequestError, match="no recorded sequence of this session"):
        client.forward_backward([_datum(foreign[0], 1.0)], "stable_reinforce").result()


def test_gspo_trains_with_a_sequence_ratio_mask(service: tinker.ServiceClient, server: Server) -> None:
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=24).result()
    seqs = _sample(client.save_weights_and_get_sampling_client().result())
    data = [_datum(s, 1.0, provenance=False) for s in seqs]
    out = client.forward_backward(data, "gspo", loss_fn_config={"clip_low_threshold": 0.9,
                                                                 "clip_high_threshold": 1.1}).result()
    client.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
    # On-policy the sequence ratio is 1, so the loss is -sum(A) over the sampled tokens.
    assert out.metrics["loss:sum"] == pytest.approx(-sum(len(s.tokens) for s in seqs), rel=1e-3)


def test_recorded_sequences_are_kept_in_the_store_until_the_session_ends(server: Server) -> None:
    from pathlib import Path

    service = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=25).result()
    _sample(client.save_weights_and_get_sampling_client(record_stability_info=True).result())
    folder = Path(server.store.removeprefix("file://")) / "sequences" / client.model_id.split(":")[0]
    assert len(list(folder.glob("*.json"))) == 1
    service.close("success").result()
    assert not folder.exists()
