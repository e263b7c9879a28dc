"""Each route's bad input gets a 4xx with a JSON body naming the problem, and tenants stay apart.

The app runs in process (httpx ASGITransport) with the embedded control plane and no runtime: every
case here fails before a runtime would be needed, which is the point.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from loraplane.api.gateway import Gateway
from loraplane.core import artifacts
from tests.api.conftest import METRICS, MODEL

ALICE = {"X-API-Key": "tml-alice"}
BOB = {"X-API-Key": "tml-bob"}

pytestmark = pytest.mark.anyio





async def _session(client: httpx.AsyncClient, headers: dict[str, str] = ALICE) -> str:
    resp = await client.post("/api/v1/create_session", json={"tags": [], "user_metadata": {}}, headers=headers)
    assert resp.status_code == 200
    return resp.json()["session_id"]


def _assert_error(resp: httpx.Response, status: int, field: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["detail"] and body["category"] in ("user", "server")
    if field is not None:
        assert body.get("field") == field, body


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "tml-nobody"}, {"X-API-Key": ""}])
async def test_missing_or_unknown_keys_get_401_json(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    _assert_error(await client.post("/api/v1/client/config", json={}, headers=headers), 401)


async def test_health_and_bootstrap_answer(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/api/v1/healthz")).json() == {"status": "ok"}
    assert (await client.post("/api/v1/client/config", json={"sdk_version": "0.38.0"}, headers=ALICE)).status_code == 200
    resp = await client.post("/api/v1/telemetry", json={"events": []}, headers=ALICE)
    assert resp.json() == {"status": "accepted"}
    sid = await _session(client)
    assert (await client.post("/api/v1/session_heartbeat", json={"session_id": sid}, headers=ALICE)).status_code == 200
    assert "loraplane_gateway_requests" in (await client.get("/metrics", headers=METRICS)).text


async def test_another_tenants_session_is_not_found(client: httpx.AsyncClient) -> None:
    sid = await _session(client, ALICE)
    _assert_error(await client.post("/api/v1/session_heartbeat", json={"session_id": sid}, headers=BOB), 404)
    _assert_error(await client.get(f"/api/v1/sessions/{sid}", headers=BOB), 404)
    _assert_error(await client.post(f"/api/v1/sessions/{sid}/finish", json={"reason": {"type": "success"}},
                                    headers=BOB), 404)
    assert (await client.get("/api/v1/sessions", headers=BOB)).json() == {"sessions": []}
    assert (await client.get("/api/v1/sessions", headers=ALICE)).json() == {"sessions": [sid]}
    done = await client.post(f"/api/v1/sessions/{sid}/finish", json={"reason": {"type": "success"}, "detail": None},
                             headers=ALICE)
    assert done.status_code == 200
    _assert_error(await client.post("/api/v1/session_heartbeat", json={"session_id": sid}, headers=ALICE), 410)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"model_seq_id": 0, "base_model": MODEL}, 400, "session_id"),
        ({"session_id": "SID", "model_seq_id": -1, "base_model": MODEL}, 400, "model_seq_id"),
        ({"session_id": "SID", "model_seq_id": 0, "base_model": "other/model"}, 400, "base_model"),
        ({"session_id": "SID", "model_seq_id": 0, "base_model": MODEL, "lora_config": {"rank": 0}}, 400,
         "lora_config.rank"),
        ({"session_id": "SID", "model_seq_id": 0, "base_model": MODEL,
          "lora_config": {"rank": 8, "train_mlp": False, "train_attn": False, "train_unembed": False}}, 400, "lora_config.train_unembed"),
        ({"session_id": "SID", "model_seq_id": 0, "base_model": MODEL, "optimizer_config": {"type": "dimuon"}}, 400,
         "optimizer_config.type"),
        ({"session_id": "s-000000000000", "model_seq_id": 0, "base_model": MODEL}, 404, "session_id"),
    ],
)
async def test_create_model_rejects_bad_bodies(client: httpx.AsyncClient, body: dict, status: int, field: str) -> None:
    sid = await _session(client)
    if body.get("session_id") == "SID":
        body = {**body, "session_id": sid}
    _assert_error(await client.post("/api/v1/create_model", json=body, headers=ALICE), status, field)


async def test_malformed_json_is_a_400_naming_the_body(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/v1/create_model", content=b"{not json", headers={**ALICE, "content-type": "application/json"})
    _assert_error(resp, 400, "body")


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"\xff\xff\xff", 400), (b"", 400), (b"\x0a\x16s-000000000000:train:0\x10\x01", 404), (b"\x0a\x03abc", 404)],
)
async def test_forward_backward_rejects_bad_protobuf_and_unknown_models(
    client: httpx.AsyncClient, body: bytes, status: int
) -> None:
    headers = {**ALICE, "content-type": "application/x-protobuf"}
    _assert_error(await client.post("/api/v1/forward_backward", content=body, headers=headers), status)


async def test_oversized_and_badly_encoded_bodies_are_refused(client: httpx.AsyncClient) -> None:
    headers = {**ALICE, "content-type": "application/x-protobuf"}
    _assert_error(await client.post("/api/v1/forward_backward", content=b"\x00" * 5000, headers=headers), 413)
    resp = await client.post("/api/v1/forward_backward", content=b"abc", headers={**headers, "content-encoding": "zstd"})
    _assert_error(resp, 400, "body")


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/api/v1/get_info", {"model_id": "s-000000000000:train:0"}, 404, "session_id"),
        ("/api/v1/get_info", {"model_id": "nope"}, 404, "model_id"),
        ("/api/v1/optim_step", {"model_id": "x", "seq_id": 1, "adam_params": {"learning_rate": -1}}, 400,
         "adam_params.learning_rate"),
        ("/api/v1/optim_step", {"model_id": "s-000000000000:train:0", "seq_id": 1}, 404, "session_id"),
        ("/api/v1/save_weights", {"model_id": "nope", "path": "a"}, 404, "model_id"),
        ("/api/v1/save_weights_for_sampler", {"model_id": "nope", "path": "a"}, 404, "model_id"),
        ("/api/v1/load_weights", {"model_id": "nope", "path": "tinker://a/weights/b"}, 404, "model_id"),
        ("/api/v1/load_weights", {"path": "tinker://a/weights/b"}, 400, "model_id"),
        ("/api/v1/unload_model", {"model_id": "nope"}, 404, "model_id"),
        ("/api/v1/retrieve_future", {"request_id": "req-1"}, 404, "request_id"),
        ("/api/v1/retrieve_future", {}, 400, "request_id"),
        ("/api/v1/asample", {"sampling_session_id": "s-000000000000:sample:0", "prompt": {"chunks": []}}, 404,
         "sampling_session_id"),
        ("/api/v1/asample", {"sampling_session_id": "x", "prompt": {}, "num_samples": 0}, 400, "num_samples"),
        ("/api/v1/weights_info", {"tinker_path": "s3://x"}, 400, "tinker_path"),
        ("/api/v1/weights_info", {"tinker_path": "tinker://r/weights/x"}, 404, "tinker_path"),
    ],
)
async def test_training_sampling_and_rest_calls_reject_bad_input(
    client: httpx.AsyncClient, path: str, body: dict, status: int, field: str
) -> None:
    _assert_error(await client.post(path, json=body, headers=ALICE), status, field)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"sampling_session_seq_id": 0}, 400, "model_path"),
        ({"sampling_session_seq_id": 0, "base_model": MODEL, "model_path": "tinker://a/weights/b"}, 400, "model_path"),
        ({"sampling_session_seq_id": 0, "model_path": "tinker://a/b"}, 400, "model_path"),
        ({"sampling_session_seq_id": 0, "model_path": "tinker://a/sampler_weights/b"}, 404, "model_path"),
        ({"sampling_session_seq_id": 0, "base_model": "other"}, 400, "base_model"),
    ],
)
async def test_create_sampling_session_rejects_bad_input(
    client: httpx.AsyncClient, body: dict, status: int, field: str
) -> None:
    sid = await _session(client)
    resp = await client.post("/api/v1/create_sampling_session", json={**body, "session_id": sid}, headers=ALICE)
    _assert_error(resp, status, field)


async def test_base_model_samplers_are_visible_to_their_tenant_only(client: httpx.AsyncClient) -> None:
    sid = await _session(client)
    resp = await client.post("/api/v1/create_sampling_session",
                             json={"session_id": sid, "sampling_session_seq_id": 3, "base_model": MODEL}, headers=ALICE)
    sampler = resp.json()["sampling_session_id"]
    assert sampler == f"{sid}:sample:3"
    assert (await client.get(f"/api/v1/samplers/{sampler}", headers=ALICE)).json() == {
        "sampler_id": sampler, "base_model": MODEL}
    _assert_error(await client.get(f"/api/v1/samplers/{sampler}", headers=BOB), 404)
    body = {"sampling_session_id": sampler, "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1]}]}}
    _assert_error(await client.post("/api/v1/asample", json=body, headers=BOB), 404)
    # Alice's sampler exists, but no runtime serves its model in this app: a retryable 503, not a crash.
    _assert_error(await client.post("/api/v1/asample", json=body, headers=ALICE), 503)
    _assert_error(await client.post("/api/v1/asample", json={**body, "topk_sample_logprobs": -1}, headers=ALICE),
                  400, "topk_sample_logprobs")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/training_runs/s-000000000000:train:0", 404),
        ("GET", "/api/v1/training_runs/s-000000000000:train:0/checkpoints", 404),
        ("DELETE", "/api/v1/training_runs/s-000000000000:train:0/checkpoints/weights/x", 404),
        ("DELETE", "/api/v1/training_runs/r/checkpoints/other/x", 400),
        ("GET", "/api/v1/no_such_route", 404),
    ],
)
async def test_rest_calls_on_unknown_things_are_json_errors(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    _assert_error(await client.request(method, path, headers=ALICE), status)


async def test_empty_listings_have_cursors(client: httpx.AsyncClient) -> None:
    runs = (await client.get("/api/v1/training_runs?limit=20&offset=0&access_scope=owned", headers=ALICE)).json()
    assert runs == {"training_runs": [], "cursor": {"offset": 0, "limit": 20, "total_count": 0}}
    assert (await client.get("/api/v1/checkpoints", headers=ALICE)).json()["checkpoints"] == []
    caps = (await client.get("/api/v1/get_server_capabilities", headers=ALICE)).json()
    assert caps["supported_models"][0]["model_name"] == MODEL


@pytest.mark.parametrize("path", ["/api/v1/forward_backward", "/api/v1/create_model"])
async def test_streamed_bodies_over_the_limit_are_refused_too(client: httpx.AsyncClient, path: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"\x00" * 1000

    resp = await client.post(path, content=chunks(), headers={**ALICE, "content-type": "application/x-protobuf"})
    _assert_error(resp, 413)


@pytest.fixture
async def with_checkpoint(client: httpx.AsyncClient, gateway: Gateway) -> tuple[httpx.AsyncClient, str, str]:
    """Alice's run with a training state and a sampler snapshot, written straight into the store."""
    gw = gateway
    run = "s-0123456789ab:train:0"
    gw.records.put_run(artifacts.build_run_record(run_id=run, tenant="alice", base_model=MODEL, lora={"rank": 4},
                                                  now="2026-01-01T00:00:00Z"))
    for segment in ("weights", "sampler_weights"):
        gw.records.finish_save(artifacts.TinkerPath(run, segment, "a"), now="2026-01-01T00:00:00Z", step=1,
                               size_bytes=1)
    return client, f"tinker://{run}/weights/a", f"tinker://{run}/sampler_weights/a"


@pytest.mark.parametrize(
    ("which", "extra", "headers", "status", "field"),
    [
        ("sampler", {"optimizer": True}, ALICE, 400, "path"),
        ("weights", {"base_model": "other/model"}, ALICE, 400, "base_model"),
        ("weights", {}, BOB, 404, "path"),
        ("missing", {}, ALICE, 404, "path"),
    ],
)
async def test_creating_from_a_state_checks_the_checkpoint(
    with_checkpoint: tuple[httpx.AsyncClient, str, str], which: str, extra: dict, headers: dict, status: int, field: str
) -> None:
    client, weights, sampler = with_checkpoint
    path = {"weights": weights, "sampler": sampler, "missing": weights.replace("/a", "/b")}[which]
    sid = await _session(client, headers)
    body = {"session_id": sid, "model_seq_id": 0, "path": path, **extra}
    _assert_error(await client.post("/api/v1/load_weights", json=body, headers=headers), status, field)


async def test_checkpoints_are_listed_for_their_owner_only(with_checkpoint: tuple[httpx.AsyncClient, str, str]) -> None:
    client, weights, sampler = with_checkpoint
    run = weights.split("/")[2]
    listed = (await client.get(f"/api/v1/training_runs/{run}/checkpoints", headers=ALICE)).json()["checkpoints"]
    assert {c["tinker_path"] for c in listed} == {weights, sampler}
    _assert_error(await client.get(f"/api/v1/training_runs/{run}/checkpoints", headers=BOB), 404)
    _assert_error(await client.delete(f"/api/v1/training_runs/{run}/checkpoints/weights/a", headers=BOB), 404)
    info = (await client.post("/api/v1/weights_info", json={"tinker_path": weights}, headers=ALICE)).json()
    assert info["base_model"] == MODEL and info["lora_rank"] == 4
    resp = await client.delete(f"/api/v1/training_runs/{run}/checkpoints/sampler_weights/a", headers=ALICE)
    assert resp.status_code == 204
    listed = (await client.get(f"/api/v1/training_runs/{run}/checkpoints", headers=ALICE)).json()["checkpoints"]
    assert [c["tinker_path"] for c in listed] == [weights]
