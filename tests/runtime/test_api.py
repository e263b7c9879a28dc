"""The runtime's internal HTTP API on the tiny model, through httpx's in-process ASGI transport."""

from __future__ import annotations

import asyncio
import math

import httpx
import numpy as np
import pytest
import torch
import zstandard
from tinker import types as tt
from tinker.proto import request_conv, response_conv
from tinker.proto import tinker_public_pb2 as pb

from loraplane.core.settings import RuntimeSettings
from loraplane.runtime.api import RuntimeState, create_app
from loraplane.runtime.engine import Engine
from loraplane.runtime.executor import Executor

PROTO = {"content-type": "application/x-protobuf"}


@pytest.fixture(scope="module")
def state(tiny_model_dir):
    torch.set_num_threads(1)
    engine = Engine(str(tiny_model_dir), base_model="tiny-llama", device="cpu", dtype="float32")
    settings = RuntimeSettings(base_model="tiny-llama", model_path=str(tiny_model_dir), max_adapters=32)
    st = RuntimeState(settings=settings, max_body_bytes=64 * 1024)
    executor = Executor(engine, settings)
    st.attach(executor)
    yield st
    executor.close()


def run(state, scenario):
    async def main():
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as http:
            return await scenario(http)

    return asyncio.run(main())


def fb_body(tokens, seq_id=1, forward_only=False, sparse_weights=False, loss_fn="cross_entropy") -> bytes:
    targets = tokens[1:] + [tokens[0]]
    if sparse_weights:  # CSR with zero fill: weight only on the last token
        n = len(tokens)
        weights = tt.TensorData(data=[1.0], dtype="float32", shape=[n], sparse_crow_indices=[0, 1],
                                sparse_col_indices=[n - 1])
    else:
        weights = tt.TensorData(data=[0.0] * (len(tokens) - 1) + [1.0], dtype="float32")
    datum = tt.Datum(model_input=tt.ModelInput.from_ints(tokens),
                     loss_fn_inputs={"target_tokens": tt.TensorData(data=targets, dtype="int64"), "weights": weights})
    request = tt.ForwardBackwardRequest(
        forward_backward_input=tt.ForwardBackwardInput(data=[datum], loss_fn=loss_fn),
        model_id="ignored", seq_id=seq_id,
    )
    return request_conv.forward_backward_request_to_proto(request).SerializeToString()


async def create(http, adapter_id, **extra):
    response = await http.post("/v1/adapters", json={"adapter_id": adapter_id, "rank": 4, "seed": 1, **extra})
    assert response.status_code in (200, 201), response.text
    return response.json()


async def result(http, request_id, wait=10.0):
    response = await http.get(f"/v1/results/{request_id}", params={"wait": wait})
    assert response.status_code == 200, response.text
    return response


async def submit_fb(http, adapter_id, body) -> str:
    response = await http.post(f"/v1/adapters/{adapter_id}/ops", content=body, headers=PROTO)
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


def test_readyz_reports_the_base_model_adapters_and_capacity(state):
    async def scenario(http):
        await create(http, "ready-a")
        health = (await http.get("/healthz")).json()
        ready = await http.get("/readyz")
        return health, ready

    health, ready = run(state, scenario)
    assert health == {"status": "ok"}
    body = ready.json()
    assert ready.status_code == 200 and body["ready"] is True and body["base_model"] == "tiny-llama"
    assert body["device"] == "cpu" and body["dtype"] == "float32"
    assert body["adapters"]["total"] >= 1 and body["adapters"]["resident"] + body["adapters"]["offloaded"] == \
        body["adapters"]["total"]
    assert body["capacity"]["max_adapters"] == 32
    assert body["capacity"]["free_slots"] == 32 - body["adapters"]["total"]


def test_readyz_is_503_until_the_model_is_attached():
    st = RuntimeState(settings=RuntimeSettings(base_model="x"))

    async def scenario(http):
        return await http.get("/readyz"), await http.get("/healthz"), await http.get("/v1/adapters")

    ready, health, adapters = run(st, scenario)
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert health.status_code == 200
    assert adapters.status_code == 503 and adapters.json()["category"] == "server"


def test_create_is_idempotent_and_conflicts_on_another_config(state):
    async def scenario(http):
        first = await http.post("/v1/adapters", json={"adapter_id": "idem", "rank": 4, "seed": 1})
        again = await http.post("/v1/adapters", json={"adapter_id": "idem", "rank": 4, "seed": 1})
        other = await http.post("/v1/adapters", json={"adapter_id": "idem", "rank": 8, "seed": 1})
        return first, again, other

    first, again, other = run(state, scenario)
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    info = first.json()
    assert info["kind"] == "train" and info["rank"] == 4 and info["alpha"] == 32.0 and info["next_seq"] == 1
    assert other.json()["category"] == "user"


def test_forward_backward_then_optim_step_through_protobuf(state):
    tokens = [5, 17, 33, 64, 100, 7]

    async def scenario(http):
        await create(http, "fb")
        # optim_step (seq 2) arrives first, as the SDK may send it; it must wait for seq 1
        opt = await http.post("/v1/adapters/fb/ops",
                              json={"seq_id": 2, "op": "optim_step", "adam_params": {"learning_rate": 0.05}})
        fb = await submit_fb(http, "fb", fb_body(tokens, seq_id=1))
        fb_result = await result(http, fb)
        opt_result = await result(http, opt.json()["request_id"])
        after = await result(http, await submit_fb(http, "fb", fb_body(tokens, seq_id=3, forward_only=True)))
        info = (await http.get("/v1/adapters/fb")).json()
        return fb_result, opt_result, after, info

    fb_result, opt_result, after, info = run(state, scenario)
    assert fb_result.headers["content-type"] == "application/x-protobuf"
    out = response_conv.deserialize_forward_backward_output(fb_result.content)
    logprobs = out.loss_fn_outputs[0]["logprobs"].tolist()
    assert len(logprobs) == len(tokens) and all(lp < 0 for lp in logprobs)
    assert out.metrics["loss:sum"] == pytest.approx(-logprobs[-1], rel=1e-5)
    body = opt_result.json()
    assert body["status"] == "done" and "grad_norm:mean" in body["result"]
    later = response_conv.deserialize_forward_backward_output(after.content).loss_fn_outputs[0]["logprobs"].tolist()
    assert later[-1] > logprobs[-1]  # one step of SGD-like descent raised the weighted token's logprob
    assert info["step"] == 1 and info["next_seq"] == 4
    # status shows the loss per weighted token of the last forward_backward (one weighted token here)
    assert info["loss"] == pytest.approx(-later[-1], rel=1e-4)


def test_sparse_and_zstd_requests_match_the_dense_one(state):
    tokens = [9, 8, 7, 6, 5]

    async def scenario(http):
        await create(http, "sparse")
        dense = await result(http, await submit_fb(http, "sparse", fb_body(tokens, seq_id=None, forward_only=True)))
        sparse = await result(http, await submit_fb(
            http, "sparse", fb_body(tokens, seq_id=None, forward_only=True, sparse_weights=True)))
        packed = zstandard.ZstdCompressor().compress(fb_body(tokens, seq_id=None, forward_only=True))
        zstd = await result(http, await submit_fb(http, "sparse", packed))
        return [response_conv.deserialize_forward_backward_output(r.content) for r in (dense, sparse, zstd)]

    dense, sparse, zstd = run(state, scenario)
    assert dense.metrics["loss:sum"] == pytest.approx(sparse.metrics["loss:sum"], rel=1e-6)
    assert dense.loss_fn_outputs[0]["logprobs"].tolist() == zstd.loss_fn_outputs[0]["logprobs"].tolist()


def test_sample_returns_a_sample_response_with_prompt_logprobs(state):
    async def scenario(http):
        await create(http, "sampler-src")
        submitted = await http.post("/v1/sample", json={
            "adapter_id": "sampler-src", "prompt_tokens": [5, 6, 7, 8], "num_samples": 2,
            "sampling_params": {"max_tokens": 5, "temperature": 1.0, "stop": [], "seed": 3},
            "prompt_logprobs": True,
        })
        assert submitted.status_code == 202, submitted.text
        base = await http.post("/v1/sample", json={"adapter_id": None, "prompt_tokens": [1, 2],
                                                   "sampling_params": {"max_tokens": 2, "stop": []}})
        return await result(http, submitted.json()["request_id"]), await result(http, base.json()["request_id"])

    sampled, base = run(state, scenario)
    assert sampled.headers["content-type"] == "application/x-protobuf"
    out = response_conv.deserialize_sample_response(sampled.content)
    assert len(out.sequences) == 2
    assert all(len(s.tokens) == 5 and len(s.logprobs) == 5 and s.stop_reason == "length" for s in out.sequences)
    assert out.prompt_logprobs[0] is None and all(v < 0 for v in out.prompt_logprobs[1:])
    raw = pb.SampleResponse.FromString(sampled.content)
    assert math.isnan(np.frombuffer(raw.prompt_logprobs, "<f4")[0])
    assert len(response_conv.deserialize_sample_response(base.content).sequences) == 1


def test_save_state_then_load_into_another_adapter_gives_the_same_outputs(state, tmp_path):
    tokens = [3, 30, 60, 90, 120]
    dest = str(tmp_path / "saved")

    async def scenario(http):
        await create(http, "orig")
        await result(http, await submit_fb(http, "orig", fb_body(tokens, seq_id=1)))
        await http.post("/v1/adapters/orig/ops", json={"seq_id": 2, "op": "optim_step",
                                                       "adam_params": {"learning_rate": 0.05}})
        saved = await http.post("/v1/adapters/orig/ops", json={"seq_id": 3, "op": "save_state", "dest": dest})
        saved_result = (await result(http, saved.json()["request_id"])).json()
        loaded = await http.post("/v1/adapters/copy/load", json={"source": dest, "optimizer": True})
        outs = []
        for adapter in ("orig", "copy"):
            r = await result(http, await submit_fb(http, adapter, fb_body(tokens, seq_id=None, forward_only=True)))
            outs.append(response_conv.deserialize_forward_backward_output(r.content).loss_fn_outputs[0]["logprobs"])
        return saved_result, loaded, outs

    saved_result, loaded, (orig, copy) = run(state, scenario)
    assert saved_result["status"] == "done"
    assert saved_result["result"]["dest"] == dest and saved_result["result"]["step"] == 1
    assert saved_result["result"]["size_bytes"] > 0
    assert (tmp_path / "saved" / "adapter_model.safetensors").exists()
    assert loaded.status_code == 200 and loaded.json()["step"] == 1 and loaded.json()["rank"] == 4
    assert np.allclose(orig.tolist(), copy.tolist(), rtol=1e-6)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "field"),
    [
        ("post", "/v1/adapters/bad/ops", {"content": fb_body([5, 6, 9999]), "headers": PROTO}, 400,
         "data[0].model_input"),
        ("post", "/v1/adapters/bad/ops", {"content": fb_body([5, 6], loss_fn="nope"), "headers": PROTO}, 400, None),
        ("post", "/v1/adapters/bad/ops", {"content": b"\xff\xff\xff", "headers": PROTO}, 400, "body"),
        ("post", "/v1/adapters/bad/ops", {"content": b"{not json"}, 400, "body"),
        ("post", "/v1/adapters/bad/ops", {"json": {"op": "optim_step", "adam_params": {"beta1": 2}}}, 400,
         "adam_params.beta1"),
        ("post", "/v1/adapters/bad/ops", {"json": {"op": "fly"}}, 400, "op"),
        ("post", "/v1/adapters/nobody/ops", {"json": {"op": "optim_step"}}, 404, "adapter_id"),
        ("post", "/v1/adapters/bad/ops", {"content": b"x" * (65 * 1024), "headers": PROTO}, 413, "body"),
        ("post", "/v1/adapters", {"json": {"adapter_id": "x", "rank": 0}}, 400, "rank"),
        ("post", "/v1/adapters", {"json": {"adapter_id": "a/b", "rank": 4}}, 400, "adapter_id"),
        ("post", "/v1/adapters", {"json": {"adapter_id": "x", "rnak": 4}}, 400, "rnak"),
        ("post", "/v1/sample", {"json": {"prompt_tokens": [1, 300]}}, 400, "prompt_tokens[1]"),
        ("get", "/v1/results/nope", {}, 404, "request_id"),
        ("get", "/v1/results/nope", {"params": {"wait": 100}}, 400, "wait"),
        ("delete", "/v1/adapters/nobody", {}, 404, None),
        ("get", "/v1/adapters/nobody/train", {}, 404, None),
    ],
)
def test_bad_inputs_are_4xx_json_naming_the_field_while_others_keep_working(state, method, path, kwargs,
                                                                            status, field):
    async def scenario(http):
        await create(http, "bad")
        await create(http, "bystander")
        response = await getattr(http, method)(path, **kwargs)
        good = await result(http, await submit_fb(http, "bystander", fb_body([1, 2, 3], seq_id=None)))
        return response, good

    response, good = run(state, scenario)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["category"] == "user" and body["detail"]
    if field is not None:
        assert body["field"] == field
    assert good.headers["content-type"] == "application/x-protobuf"


def test_long_poll_answers_pending_then_the_result(state):
    async def scenario(http):
        await create(http, "poll")
        later = await submit_fb(http, "poll", fb_body([4, 5, 6], seq_id=2))
        pending = (await result(http, later, wait=0.05)).json()
        await submit_fb(http, "poll", fb_body([4, 5, 6], seq_id=1))
        done = await result(http, later, wait=10)
        return pending, done

    pending, done = run(state, scenario)
    assert pending == {"status": "pending"}
    assert done.headers["content-type"] == "application/x-protobuf"


def test_failed_op_reports_failed_with_its_category(state, tmp_path):
    async def scenario(http):
        await create(http, "fails")
        r = await http.post("/v1/adapters/fails/ops",
                            json={"op": "load_state", "source": str(tmp_path / "missing")})
        return (await result(http, r.json()["request_id"])).json()

    body = run(state, scenario)
    assert body["status"] == "failed" and body["category"] == "user" and body["error"]


def test_offload_list_and_delete(state):
    async def scenario(http):
        await create(http, "gone")
        off = (await http.post("/v1/adapters/gone/offload")).json()
        listed = (await http.get("/v1/adapters")).json()["adapters"]
        deleted = await http.delete("/v1/adapters/gone")
        missing = await http.get("/v1/adapters/gone")
        return off, listed, deleted, missing

    off, listed, deleted, missing = run(state, scenario)
    assert off["resident"] is False
    assert "gone" in [a["adapter_id"] for a in listed]
    assert deleted.status_code == 204 and missing.status_code == 404


def test_metrics_expose_ops_batches_queue_depth_and_latency(state):
    async def scenario(http):
        await create(http, "metered")
        await result(http, await submit_fb(http, "metered", fb_body([1, 2, 3], seq_id=None)))
        return await http.get("/metrics")

    response = run(state, scenario)
    text = response.text
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'loraplane_runtime_ops_total{op="forward_backward",outcome="ok"}' in text
    for series in ("loraplane_runtime_batch_requests_bucket", "loraplane_runtime_queue_depth",
                   "loraplane_runtime_step_latency_seconds_bucket", "loraplane_runtime_tokens_per_second",
                   'loraplane_runtime_adapters{state="resident"}'):
        assert series in text


def test_readyz_and_metrics_report_the_decode_batch_and_its_kv_budget(state):
    async def scenario(http):
        submitted = await http.post("/v1/sample", json={"prompt_tokens": [5, 6, 7], "num_samples": 2,
                                                        "sampling_params": {"max_tokens": 4, "stop": []}})
        await result(http, submitted.json()["request_id"])
        budget = state.settings.kv_cache_bytes
        state.settings.kv_cache_bytes = 1024
        try:
            huge = await http.post("/v1/sample", json={"prompt_tokens": [5, 6, 7], "num_samples": 4,
                                                       "sampling_params": {"max_tokens": 100}})
        finally:
            state.settings.kv_cache_bytes = budget
        return (await http.get("/readyz")).json(), (await http.get("/metrics")).text, huge

    ready, text, huge = run(state, scenario)
    sampling = ready["sampling"]
    assert sampling["kv_cache_bytes"] == state.settings.kv_cache_bytes
    assert sampling["max_decode_rows"] == state.settings.max_decode_rows and sampling["queued"] == 0
    assert sampling["kv_bytes_used"] >= 0 and sampling["kv_bytes_reserved"] >= 0
    for series in ("loraplane_runtime_decode_rows_per_step_bucket", "loraplane_runtime_decode_tokens_total",
                   "loraplane_runtime_time_to_first_token_seconds_bucket",
                   "loraplane_runtime_sample_queue_wait_seconds_bucket", "loraplane_runtime_kv_cache_bytes",
                   "loraplane_runtime_kv_cache_budget_bytes", "loraplane_runtime_decode_tokens_per_second"):
        assert series in text
    assert huge.status_code == 400 and "kv_cache_bytes" in huge.json()["error"]
