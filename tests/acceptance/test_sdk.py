"""The official tinker SDK (0.38.0), unmodified, against `loraplane serve` on loopback."""

from __future__ import annotations

import math

import pytest
import tinker

from tests.acceptance.conftest import KEYS, Server
from tests.acceptance.helpers import ce_batch, close, rl_batch, train


@pytest.fixture(scope="module")
def service(server: Server):  # type: ignore[no-untyped-def]
    client = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
    yield client
    client.close("success").result()


def test_pipelined_training_steps_lower_the_loss(service: tinker.ServiceClient, server: Server) -> None:
    client = service.create_lora_training_client(base_model=server.model, rank=8, seed=1).result()
    info = client.get_info()
    assert info.model_data.model_name == server.model and info.model_data.tokenizer_id == server.model
    losses = train(client, 6)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] * 0.9, losses
    out = client.forward(ce_batch(), "cross_entropy").result()
    assert len(out.loss_fn_outputs) == 3
    for datum, o in zip(ce_batch(), out.loss_fn_outputs, strict=True):
        lp = o["logprobs"].tolist()
        assert len(lp) == datum.model_input.length and all(x <= 0 for x in lp)
    assert out.metrics["loss:sum"] < losses[0]


@pytest.mark.parametrize(
    ("loss_fn", "config"),
    [("importance_sampling", None), ("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
     ("cispo", None), ("dro", {"beta": 0.1})],
)
def test_every_rl_loss_trains(service: tinker.ServiceClient, server: Server, loss_fn: str, config: dict | None) -> None:
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=2).result()
    out = client.forward_backward(rl_batch(), loss_fn, loss_fn_config=config).result()
    client.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
    assert math.isfinite(out.metrics["loss:sum"])
    assert [len(o["logprobs"].tolist()) for o in out.loss_fn_outputs] == [d.model_input.length for d in rl_batch()]


def test_resuming_with_optimizer_continues_exactly(service: tinker.ServiceClient, server: Server) -> None:
    first = service.create_lora_training_client(base_model=server.model, rank=8, seed=3).result()
    train(first, 2)
    path = first.save_state("mid").result().path
    assert path == f"tinker://{first.model_id}/weights/mid"
    uninterrupted = train(first, 3, pipelined=False)
    resumed = service.create_training_client_from_state_with_optimizer(path).result()
    assert resumed.model_id != first.model_id
    assert close(train(resumed, 3, pipelined=False), uninterrupted)
    # The legacy form (load_weights on an existing model) rewinds the same client to the state.
    with pytest.warns(FutureWarning, match="deprecated"):
        first.load_state_with_optimizer(path).result()
    assert close(train(first, 3, pipelined=False), uninterrupted)


def test_sampling_from_live_and_saved_weights(service: tinker.ServiceClient, server: Server) -> None:
    client = service.create_lora_training_client(base_model=server.model, rank=8, seed=4).result()
    train(client, 2)
    prompt = tinker.ModelInput.from_ints([1, 70, 71, 72])
    params = tinker.SamplingParams(max_tokens=5, temperature=1.0, seed=7)
    live = client.save_weights_and_get_sampling_client().result()
    res = live.sample(prompt=prompt, num_samples=2, sampling_params=params).result()
    assert len(res.sequences) == 2
    for seq in res.sequences:
        assert 1 <= len(seq.tokens) <= 5 and len(seq.logprobs) == len(seq.tokens)
    path = client.save_weights_for_sampler("acceptance-sampler").result().path
    assert path == f"tinker://{client.model_id}/sampler_weights/acceptance-sampler"
    saved = service.create_sampling_client(model_path=path).result()
    assert saved.get_base_model() == server.model
    greedy = tinker.SamplingParams(max_tokens=4, temperature=0.0)
    a = live.sample(prompt=prompt, num_samples=1, sampling_params=greedy).result().sequences[0].tokens
    b = saved.sample(prompt=prompt, num_samples=1, sampling_params=greedy).result().sequences[0].tokens
    assert a == b
    logprobs = saved.compute_logprobs(prompt).result()
    assert logprobs[0] is None and len(logprobs) == 4 and all(x <= 0 for x in logprobs[1:])
    base = service.create_sampling_client(base_model=server.model).result()
    assert len(base.sample(prompt=prompt, num_samples=1, sampling_params=greedy).result().sequences) == 1


def test_rest_client_lists_gets_and_deletes(service: tinker.ServiceClient, server: Server) -> None:
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=5).result()
    train(client, 1)
    state = client.save_state("rest-a").result().path
    sampler = client.save_weights_for_sampler("rest-b").result().path
    rest = tinker.RestClient(base_url=server.url, api_key=KEYS["alice"])
    run = rest.get_training_run(client.model_id).result()
    assert run.base_model == server.model and run.model_owner == "alice" and run.lora_rank == 4
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == state
    runs = rest.list_training_runs(limit=100).result()
    assert client.model_id in [r.training_run_id for r in runs.training_runs]
    listed = rest.list_checkpoints(client.model_id).result().checkpoints
    assert {c.tinker_path for c in listed} == {state, sampler}
    assert {c.checkpoint_type for c in listed} == {"training", "sampler"}
    assert state in {c.tinker_path for c in rest.list_user_checkpoints().result().checkpoints}
    assert rest.get_weights_info_by_tinker_path(state).result().lora_rank == 4
    rest.set_checkpoint_ttl_from_tinker_path(state, 3600).result()
    with_ttl = [c for c in rest.list_checkpoints(client.model_id).result().checkpoints if c.tinker_path == state]
    assert with_ttl[0].expires_at is not None
    rest.delete_checkpoint(client.model_id, "sampler_weights/rest-b").result()
    assert [c.tinker_path for c in rest.list_checkpoints(client.model_id).result().checkpoints] == [state]
    with pytest.raises(tinker.NotFoundError):
        rest.get_training_run("s-000000000000:train:0").result()


def test_the_demo_flow_runs_on_the_tiny_model(server: Server) -> None:
    from transformers import AutoTokenizer

    from loraplane.singlenode import demo

    lines: list[str] = []
    result = demo.train_and_show(base_url=server.url, api_key=KEYS["alice"], base_model=server.model,
                                 tokenizer=AutoTokenizer.from_pretrained(server.model), steps=4,
                                 learning_rate=5e-3, out=lines.append)
    assert result["losses"][-1] < result["losses"][0]
    assert result["checkpoint"].startswith("tinker://") and result["checkpoint"].endswith("/weights/demo-final")
    assert any(line.startswith("before training:") for line in lines)
    assert any(line.startswith("checkpoint saved: tinker://") for line in lines)
