"""Hostile and unlucky clients against `loraplane serve`, one test per way they once hurt it.

Each test is named after what it proves and drives the real server over its socket: raw HTTP for
what a hostile client sends, the official SDK where the SDK's own behaviour (retries, polling) was
part of the harm.
"""

from __future__ import annotations

import math
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tinker
from tinker.proto import tinker_public_pb2 as pb

from tests.acceptance.conftest import KEYS, Server, start_server
from tests.acceptance.helpers import ce_batch

ALICE = {"X-API-Key": KEYS["alice"]}
BOB = {"X-API-Key": KEYS["bob"]}
#: the caps of the hardened server, small enough to reach in a test
LIMITS = {
    "LORAPLANE_GATEWAY__HEADER_TIMEOUT_S": "1", "LORAPLANE_GATEWAY__BODY_TIMEOUT_S": "1",
    "LORAPLANE_GATEWAY__MAX_SAMPLE_TOKENS": "4096", "LORAPLANE_GATEWAY__MAX_PROMPT_TOKENS": "256",
    "LORAPLANE_GATEWAY__OPENAPI": "true", "LORAPLANE_GATEWAY__METRICS_TOKEN": "scrape-token",
    "LORAPLANE_RUNTIME__MAX_REQUEST_TOKENS": "64",
}


@pytest.fixture(scope="module")
def hardened(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tiny_model_dir, f"file://{tmp_path_factory.mktemp('store')}", env=LIMITS)
    yield srv
    srv.stop()


@pytest.fixture
def http(hardened: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hardened.url, timeout=30) as client:
        yield client


def _training_client(server: Server, tenant: str = "alice") -> tuple[tinker.ServiceClient, tinker.TrainingClient]:
    service = tinker.ServiceClient(base_url=server.url, api_key=KEYS[tenant])
    return service, service.create_lora_training_client(base_model=server.model, rank=4, seed=3).result()


def _base_sampler(http: httpx.Client, server: Server) -> str:
    """A new session's sampler of the base model, through the protocol's own calls."""
    sid = http.post("/api/v1/create_session", json={"tags": []}, headers=ALICE).json()["session_id"]
    resp = http.post("/api/v1/create_sampling_session", headers=ALICE,
                     json={"session_id": sid, "sampling_session_seq_id": 0, "base_model": server.model})
    assert resp.status_code == 200, resp.text
    return resp.json()["sampling_session_id"]


def _tensor(values: list[float] | list[int], dtype: int) -> pb.Tensor:
    np_dtype = "<f4" if dtype == pb.DTYPE_FLOAT32 else "<i8"
    return pb.Tensor(dense=np.asarray(values, dtype=np_dtype).tobytes(), dtype=dtype, shape=[len(values)])


def _fwdbwd(model_id: str, *, weights: pb.Tensor | None = None, seq_id: int = 0) -> bytes:
    tokens = [1, 70, 71, 72, 73]
    datum = pb.Datum()
    datum.model_input.add().encoded_text.tokens = np.asarray(tokens[:-1], dtype="<i4").tobytes()
    datum.loss_fn_inputs["target_tokens"].CopyFrom(_tensor(tokens[1:], pb.DTYPE_INT64))
    datum.loss_fn_inputs["weights"].CopyFrom(weights or _tensor([1.0] * 4, pb.DTYPE_FLOAT32))
    request = pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, loss_fn="cross_entropy")
    request.data.append(datum)
    return request.SerializeToString()


def _post_proto(http: httpx.Client, body: bytes, headers: dict[str, str] = ALICE) -> httpx.Response:
    return http.post("/api/v1/forward_backward", content=body,
                     headers={**headers, "content-type": "application/x-protobuf"})


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _error(resp: httpx.Response, status: int, field: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["detail"]
    if field is not None:
        assert body.get("field") == field, body
    return body


def test_item1_a_sparse_shape_of_billions_of_cells_is_refused_before_anything_is_allocated(
        hardened: Server, http: httpx.Client) -> None:
    _, client = _training_client(hardened)
    before = _rss_kib(hardened.proc.pid)
    for shape in ([2**30], [1, 2**30], [2**63 - 1]):
        csr = pb.SparseCsr(values=np.asarray([1.0], "<f4").tobytes(), crow_indices=np.asarray([0, 1], "<i8").tobytes(),
                           col_indices=np.asarray([3], "<i8").tobytes())
        weights = pb.Tensor(sparse_csr=csr, dtype=pb.DTYPE_FLOAT32, shape=shape)
        _error(_post_proto(http, _fwdbwd(client.model_id, weights=weights)), 400, "data[0].loss_fn_inputs.weights")
    assert _rss_kib(hardened.proc.pid) - before < 200 * 1024
    # and the same model trains on
    assert math.isfinite(client.forward_backward(ce_batch(), "cross_entropy").result().metrics["loss:sum"])


def test_item2_sampler_snapshots_take_no_training_slot_and_only_the_newest_stay(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    server = start_server(tiny_model_dir, f"file://{tmp_path}/store",
                          env={"LORAPLANE_RUNTIME__MAX_ADAPTERS": "2", "LORAPLANE_RUNTIME__MAX_SNAPSHOTS": "2"})
    try:
        _, client = _training_client(server)
        samplers = [client.save_weights_and_get_sampling_client().result() for _ in range(5)]
        # Two training slots: alice's client and bob's new one fit beside 5 snapshots taken.
        _, other = _training_client(server, "bob")
        assert other.forward_backward(ce_batch(), "cross_entropy").result().metrics
        prompt = tinker.ModelInput.from_ints([1, 70, 71])
        params = tinker.SamplingParams(max_tokens=3, temperature=0.0)
        assert samplers[-1].sample(prompt, 1, params).result().sequences[0].tokens
        assert samplers[-2].sample(prompt, 1, params).result().sequences[0].tokens
        with pytest.raises(tinker.NotFoundError, match="newest snapshots"):
            samplers[0].sample(prompt, 1, params).result()
    finally:
        server.stop()


def test_item3_an_overflowing_gradient_fails_optim_step_in_the_client_and_keeps_the_weights(
        hardened: Server) -> None:
    _, client = _training_client(hardened)
    huge = [tinker.Datum(model_input=d.model_input,
                         loss_fn_inputs={**d.loss_fn_inputs, "weights": [3e38] * len(d.model_input.to_ints())})
            for d in ce_batch()]
    client.forward_backward(huge, "cross_entropy").result()
    started = time.monotonic()
    with pytest.raises(tinker.RequestFailedError, match="gradient norm is (inf|nan)"):
        client.optim_step(tinker.AdamParams(learning_rate=1e-2)).result(timeout=60)
    assert time.monotonic() - started < 30
    # the bad gradients were dropped and the weights kept: training goes on with finite losses
    client.forward_backward(ce_batch(), "cross_entropy").result()
    client.optim_step(tinker.AdamParams(learning_rate=1e-2)).result(timeout=60)
    assert math.isfinite(client.forward_backward(ce_batch(), "cross_entropy").result().metrics["loss:sum"])


def test_item4_a_forward_backward_over_the_token_cap_gets_413(hardened: Server, http: httpx.Client) -> None:
    _, client = _training_client(hardened)
    many = ce_batch(["x" * 30, "y" * 30, "z" * 30])  # 90 tokens, over the cap of 64
    request = pb.ForwardBackwardRequest.FromString(_fwdbwd(client.model_id))
    for datum in many:
        tokens = datum.model_input.to_ints()
        extra = request.data.add()
        extra.model_input.add().encoded_text.tokens = np.asarray(tokens, dtype="<i4").tobytes()
        extra.loss_fn_inputs["target_tokens"].CopyFrom(_tensor(tokens, pb.DTYPE_INT64))
    _error(_post_proto(http, request.SerializeToString()), 413, "data")


def test_item4_a_sample_request_over_the_caps_gets_413_naming_the_field(hardened: Server, http: httpx.Client) -> None:
    body = {"sampling_session_id": _base_sampler(http, hardened), "num_samples": 64,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 70]}]},
            "sampling_params": {"max_tokens": 128}}
    _error(http.post("/api/v1/asample", json=body, headers=ALICE), 413, "sampling_params.max_tokens")
    body.update(num_samples=1, prompt={"chunks": [{"type": "encoded_text", "tokens": [70] * 300}]})
    _error(http.post("/api/v1/asample", json=body, headers=ALICE), 413, "prompt")


def _raw(server: Server, request: bytes, *, read_timeout: float = 10) -> bytes:
    """Send raw bytes; read one whole answer (headers and Content-Length body), or what came
    before the server closed the connection or `read_timeout` passed."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if sep and length is not None and len(body) >= length:
                    break
        except TimeoutError:
            pass
        return data


def test_item5_a_request_without_a_key_is_answered_401_before_its_body_is_read(hardened: Server) -> None:
    # 60 MB announced, nothing sent: the answer cannot wait for the body.
    head = (b"POST /api/v1/create_model HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 60000000\r\n\r\n")
    started = time.monotonic()
    answer = _raw(hardened, head, read_timeout=5)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert time.monotonic() - started < 2


def test_item6_a_leaked_request_id_does_not_read_another_tenants_result(hardened: Server, http: httpx.Client) -> None:
    _, alice = _training_client(hardened)
    _, bob = _training_client(hardened, "bob")
    resp = _post_proto(http, _fwdbwd(alice.model_id))
    assert resp.status_code == 200, resp.text
    alice_rid = resp.json()["request_id"]
    bob_rid = _post_proto(http, _fwdbwd(bob.model_id), BOB).json()["request_id"]
    forged = bob_rid.rsplit(".", 1)[0] + "." + alice_rid.rsplit(".", 1)[1]
    _error(http.post("/api/v1/retrieve_future", json={"request_id": forged}, headers=BOB), 404)
    _error(http.post("/api/v1/retrieve_future", json={"request_id": alice_rid}, headers=BOB), 404)
    assert http.post("/api/v1/retrieve_future", json={"request_id": alice_rid}, headers=ALICE).status_code == 200


def test_item7_a_finished_save_is_listed_although_its_result_was_never_fetched(
        hardened: Server, http: httpx.Client) -> None:
    _, client = _training_client(hardened)
    run = client.model_id
    resp = http.post("/api/v1/save_weights", json={"model_id": run, "path": "unfetched", "seq_id": 1}, headers=ALICE)
    assert resp.status_code == 200, resp.text
    listed: list[str] = []
    deadline = time.monotonic() + 30
    while "weights/unfetched" not in listed and time.monotonic() < deadline:
        got = http.get(f"/api/v1/training_runs/{run}/checkpoints", headers=ALICE).json()["checkpoints"]
        listed = [c["checkpoint_id"] for c in got]
        time.sleep(0.05)
    assert "weights/unfetched" in listed
    # loadable and deletable like any other
    assert http.delete(f"/api/v1/training_runs/{run}/checkpoints/weights/unfetched", headers=ALICE).status_code == 204


def test_item8_a_store_that_refuses_writes_gives_a_clear_error_without_path_and_no_partial_folder(
        hardened: Server, http: httpx.Client) -> None:
    _, client = _training_client(hardened)
    run_dir = Path(hardened.store.removeprefix("file://")) / "runs" / client.model_id
    run_dir.mkdir(parents=True, exist_ok=True)
    # The gateway's own write (the pending save record) fails: 507, not retried, no path.
    (run_dir / "pending").write_text("not a folder")
    resp = http.post("/api/v1/save_weights", json={"model_id": client.model_id, "path": "a"}, headers=ALICE)
    body = _error(resp, 507)
    assert resp.headers["x-should-retry"] == "false"
    assert str(run_dir) not in body["detail"] and "artifact store" in body["detail"]
    # The runtime's write fails: the save's future fails in the client, nothing half-written stays.
    (run_dir / "pending").unlink()
    (run_dir / "weights").write_text("not a folder")
    with pytest.raises(tinker.RequestFailedError, match="artifact store") as failure:
        client.save_state("b").result(timeout=60)
    assert str(run_dir) not in str(failure.value)
    assert not [p for p in run_dir.iterdir() if ".partial-" in p.name]
    (run_dir / "weights").unlink()
    assert client.save_state("c").result(timeout=60).path.endswith("/weights/c")


def test_item10_a_non_finite_learning_rate_is_a_400_naming_the_field(hardened: Server, http: httpx.Client) -> None:
    _, client = _training_client(hardened)
    raw = b'{"model_id": "' + client.model_id.encode() + b'", "adam_params": {"learning_rate": Infinity}}'
    resp = http.post("/api/v1/optim_step", content=raw, headers={**ALICE, "content-type": "application/json"})
    _error(resp, 400, "adam_params.learning_rate")


@pytest.mark.parametrize(("sampling_params", "field"), [
    ({"seed": 2**64}, "sampling_params.seed"),
    ({"temperature": 1e-300}, "sampling_params.temperature"),
])
def test_item10_out_of_range_sampling_params_are_a_400(
        hardened: Server, http: httpx.Client, sampling_params: dict, field: str) -> None:
    body = {"sampling_session_id": _base_sampler(http, hardened), "num_samples": 1,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 70]}]},
            "sampling_params": {"max_tokens": 2, **sampling_params}}
    _error(http.post("/api/v1/asample", json=body, headers=ALICE), 400, field)


def test_item10_a_model_seq_id_no_id_can_spell_is_a_400(http: httpx.Client) -> None:
    sid = http.post("/api/v1/create_session", json={"tags": [], "user_metadata": {}}, headers=ALICE).json()["session_id"]
    body = {"session_id": sid, "model_seq_id": 2**40, "base_model": "x", "lora_config": {"rank": 4}}
    _error(http.post("/api/v1/create_model", json=body, headers=ALICE), 400, "model_seq_id")


def test_item10_a_seq_id_far_ahead_is_refused_instead_of_stalling_the_queue(
        hardened: Server, http: httpx.Client) -> None:
    _, client = _training_client(hardened)
    _error(_post_proto(http, _fwdbwd(client.model_id, seq_id=2**31 - 1)), 400, "seq_id")
    resp = http.post("/api/v1/optim_step", json={"model_id": client.model_id, "seq_id": 2**63}, headers=ALICE)
    _error(resp, 400, "seq_id")
    started = time.monotonic()
    client.forward_backward(ce_batch(), "cross_entropy").result(timeout=60)
    assert time.monotonic() - started < 10


def test_item10_openapi_and_metrics_need_credentials(http: httpx.Client) -> None:
    _error(http.get("/openapi.json"), 401)
    assert http.get("/openapi.json", headers=ALICE).json()["info"]["title"] == "loraplane gateway"
    _error(http.get("/metrics"), 401)
    _error(http.get("/metrics", headers=ALICE), 401)
    assert "loraplane_gateway_requests" in http.get("/metrics", headers={"Authorization": "Bearer scrape-token"}).text


def test_item10_store_files_are_private_to_the_service(hardened: Server, http: httpx.Client) -> None:
    sid = http.post("/api/v1/create_session", json={"tags": [], "user_metadata": {}}, headers=ALICE).json()["session_id"]
    record = Path(hardened.store.removeprefix("file://")) / "sessions" / f"{sid}.json"
    assert stat.S_IMODE(record.stat().st_mode) & 0o077 == 0


def test_item10_a_client_that_never_finishes_its_headers_is_disconnected(hardened: Server) -> None:
    started = time.monotonic()
    answer = _raw(hardened, b"POST /api/v1/create_session HTTP/1.1\r\nhost: x\r\n", read_timeout=10)
    assert answer == b""  # closed without an answer, once the 1 s header deadline passed
    assert time.monotonic() - started < 5


def test_item10_a_body_that_stops_arriving_gets_408(hardened: Server) -> None:
    head = (b"POST /api/v1/create_session HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"x-api-key: " + KEYS["alice"].encode() + b"\r\ncontent-length: 100\r\n\r\n{\"tags\":")
    answer = _raw(hardened, head, read_timeout=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_item10_one_key_for_two_tenants_is_refused_at_start(tiny_model_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alice=tml-shared-key-0001\nbob=tml-shared-key-0001\n")
    keys.chmod(0o600)
    with pytest.raises(RuntimeError, match="also the key of tenant 'alice'"):
        start_server(tiny_model_dir, f"file://{tmp_path}/store", args=["--api-keys-file", str(keys)])


def test_item10_a_keys_file_others_can_read_is_warned_about(tiny_model_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alice=tml-alice-0123456789\n")
    keys.chmod(0o646)
    server = start_server(tiny_model_dir, f"file://{tmp_path}/store", args=["--api-keys-file", str(keys)])
    try:
        assert any(f"chmod 600 {keys}" in line for line in server.log), server.log
    finally:
        server.stop()


def test_item9_a_tenant_over_its_queued_work_gets_429_with_retry_after_and_others_go_on(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    server = start_server(tiny_model_dir, f"file://{tmp_path}/store",
                          env={"LORAPLANE_RUNTIME__MAX_QUEUED_TOKENS_PER_TENANT": "20"})
    try:
        # steps 2.. wait for a step 1 that never comes: 4 tokens each, 20 at most queued
        _, client = _training_client(server, "bob")
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answers = [_post_proto(http, _fwdbwd(client.model_id, seq_id=seq), BOB) for seq in range(2, 9)]
            assert [a.status_code for a in answers[:5]] == [200] * 5
            _error(answers[5], 429)
            assert int(answers[5].headers["retry-after"]) >= 1
        _, other = _training_client(server, "alice")
        assert math.isfinite(other.forward_backward(ce_batch(), "cross_entropy").result().metrics["loss:sum"])
    finally:
        server.stop()


def test_item9_a_tenant_over_its_request_rate_gets_429_with_retry_after(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = start_server(tiny_model_dir, f"file://{tmp_path}/store",
                          env={"LORAPLANE_GATEWAY__RATE_PER_S": "1", "LORAPLANE_GATEWAY__RATE_BURST": "5"})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answers = [http.post("/api/v1/create_session", json={"tags": []}, headers=ALICE) for _ in range(8)]
            assert [a.status_code for a in answers[:5]] == [200] * 5
            limited = answers[5]
            _error(limited, 429)
            assert 1 <= int(limited.headers["retry-after"]) <= 2
            # another tenant is not slowed by alice's flood
            assert http.post("/api/v1/create_session", json={"tags": []}, headers=BOB).status_code == 200
    finally:
        server.stop()


def test_item9_listing_sessions_reads_the_tenants_index_not_every_session(http: httpx.Client, hardened: Server) -> None:
    created = [http.post("/api/v1/create_session", json={"tags": []}, headers=BOB).json()["session_id"]
               for _ in range(3)]
    store = Path(hardened.store.removeprefix("file://"))
    index = sorted(os.listdir(store / "index" / "tenants" / "bob" / "sessions"))
    assert [name.rsplit("_", 1)[1] for name in index][-3:] == created
    assert http.get("/api/v1/sessions?limit=1000", headers=BOB).json()["sessions"][-3:] == created
