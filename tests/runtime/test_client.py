"""`loraplane.clients.runtime.RuntimeClient`: error mapping, unreachable runtimes, and the real app."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from tinker import types as tt
from tinker.proto import request_conv, response_conv

from loraplane.clients.runtime import RuntimeClient, RuntimeUnavailable, error_for
from loraplane.core import errors
from loraplane.core.params import AdamParams, LoraConfig, SamplingParams
from loraplane.core.runtime_ops import OpBody, OpKind, SampleBody
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime.api import RuntimeState, create_app
from loraplane.runtime.engine import Engine
from loraplane.runtime.executor import Executor


@pytest.mark.parametrize(
    ("status", "body", "cls", "field"),
    [
        (400, {"detail": "bad", "field": "rank"}, errors.InvalidInput, "rank"),
        (404, {"detail": "gone"}, errors.NotFound, None),
        (409, {"detail": "other config"}, errors.Conflict, None),
        (413, {"detail": "big"}, errors.PayloadTooLarge, None),
        (503, {"detail": "loading"}, errors.CapacityError, None),
        (418, None, errors.UserError, None),
        (500, "not a dict", errors.ServerError, None),
    ],
)
def test_error_for_maps_status_codes_to_the_error_hierarchy(status, body, cls, field):
    exc = error_for(status, body)
    assert type(exc) is cls and exc.field == field and exc.message


def test_unreachable_runtime_raises_runtime_unavailable():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def scenario():
        async with RuntimeClient("http://runtime", transport=httpx.MockTransport(refuse)) as client:
            await client.health()

    with pytest.raises(RuntimeUnavailable) as info:
        asyncio.run(scenario())
    assert isinstance(info.value, errors.ServerError) and info.value.status_code == 503


def test_client_sends_protobuf_unchanged_and_escapes_ids():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.raw_path, request.headers["content-type"], request.content))
        return httpx.Response(202, json={"request_id": "r1"})

    async def scenario():
        async with RuntimeClient("http://runtime/", transport=httpx.MockTransport(handler)) as client:
            return await client.submit_forward_backward("s1:train:0", b"\x0a\x01m")

    assert asyncio.run(scenario()) == "r1"
    assert seen == [(b"/v1/adapters/s1:train:0/ops", "application/x-protobuf", b"\x0a\x01m")]


def _fb(tokens, seq_id):
    datum = tt.Datum(model_input=tt.ModelInput.from_ints(tokens), loss_fn_inputs={
        "target_tokens": tt.TensorData(data=tokens[1:] + [1], dtype="int64"),
        "weights": tt.TensorData(data=[1.0] * len(tokens), dtype="float32")})
    req = tt.ForwardBackwardRequest(forward_backward_input=tt.ForwardBackwardInput(data=[datum], loss_fn="cross_entropy"),
                                    model_id="x", seq_id=seq_id)
    return request_conv.forward_backward_request_to_proto(req).SerializeToString()


async def _session(client: RuntimeClient) -> dict:
    """Every endpoint once, the way the gateway and control plane use them."""
    out: dict = {}
    out["health"] = await client.health()
    out["created"] = await client.create_adapter("c1", LoraConfig(rank=4, seed=2))
    with pytest.raises(errors.Conflict):
        await client.create_adapter("c1", LoraConfig(rank=8))
    rid = await client.submit_forward_backward("c1", _fb([5, 6, 7], seq_id=1))
    ctype, body = await client.result(rid, wait=10)
    out["fb"] = (ctype, response_conv.deserialize_forward_backward_output(body).metrics)
    opt = await client.submit_op("c1", OpBody(seq_id=2, op=OpKind.OPTIM_STEP, adam_params=AdamParams(learning_rate=0.01)))
    out["opt"] = await client.result(opt, wait=10)
    sample = await client.submit_sample(SampleBody(adapter_id="c1", prompt_tokens=[1, 2],
                                                   sampling_params=SamplingParams(max_tokens=3, stop=[])))
    out["sample"] = await client.result(sample, wait=10)
    out["listed"] = [a["adapter_id"] for a in await client.list_adapters()]
    out["offloaded"] = await client.offload_adapter("c1")
    out["got"] = await client.get_adapter("c1")
    out["ready"] = await client.readiness()
    out["metrics"] = await client.metrics()
    with pytest.raises(errors.InvalidInput) as bad:  # a body the client did not check: the runtime does
        unchecked = OpBody.model_construct(op=OpKind.OPTIM_STEP, adam_params=AdamParams.model_construct(eps=-1.0))
        await client.submit_op("c1", unchecked)
    out["bad_field"] = bad.value.field
    with pytest.raises(errors.NotFound):
        await client.training_status("c1")
    await client.delete_adapter("c1")
    with pytest.raises(errors.NotFound):
        await client.get_adapter("c1")
    return out


def _check_session(out: dict) -> None:
    assert out["health"] == {"status": "ok"}
    assert out["created"]["adapter_id"] == "c1" and out["created"]["rank"] == 4
    assert out["fb"][0] == "application/x-protobuf" and out["fb"][1]["loss:sum"] > 0
    assert out["opt"][1]["status"] == "done"
    assert out["sample"][0] == "application/x-protobuf"
    assert "c1" in out["listed"] and out["offloaded"]["resident"] is False
    assert out["got"]["step"] == 1 and out["ready"]["ready"] is True
    assert "loraplane_runtime_ops_total" in out["metrics"]
    assert out["bad_field"] == "adam_params.eps"


def test_client_against_the_app_in_process(tiny_model_dir):
    torch.set_num_threads(1)
    settings = RuntimeSettings(base_model="tiny", model_path=str(tiny_model_dir))
    state = RuntimeState(settings=settings)
    executor = Executor(Engine(str(tiny_model_dir), base_model="tiny", device="cpu"), settings)
    state.attach(executor)

    async def scenario():
        transport = httpx.ASGITransport(app=create_app(state))
        async with RuntimeClient("http://runtime", transport=transport) as client:
            return await _session(client)

    try:
        _check_session(asyncio.run(scenario()))
    finally:
        executor.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_loraplane_runtime_serves_on_loopback_and_logs_its_url(tiny_model_dir):
    port = _free_port()
    cmd = [sys.executable, "-m", "loraplane", "runtime", "--base-model", "tiny", "--model-path",
           str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready at" in line:
                break
        assert any(f"ready at http://127.0.0.1:{port}" in line for line in lines), "".join(lines)

        async def scenario():
            async with RuntimeClient(f"http://127.0.0.1:{port}") as client:
                return await _session(client)

        _check_session(asyncio.run(scenario()))
    finally:
        proc.terminate()
        proc.wait(10)


def test_readiness_body_is_returned_while_not_ready():
    async def scenario():
        transport = httpx.ASGITransport(app=create_app(RuntimeState(settings=RuntimeSettings(base_model="b"))))
        async with RuntimeClient("http://runtime", transport=transport) as client:
            ready = await client.readiness()
            with pytest.raises(errors.CapacityError):
                await client.list_adapters()
            return ready

    ready = asyncio.run(scenario())
    assert ready["ready"] is False and json.dumps(ready)
