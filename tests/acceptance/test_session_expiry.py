"""A client killed mid-training: its session expires, its adapter is freed, its last state resumes.

The server runs with a 2 s expiry (the SDK heartbeats every 10 s, so every session here that is not
kept alive by hand expires); the resume runs on a second server over the same store with the
default expiry, as an operator restarting with normal settings would.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import tinker

from tests.acceptance.conftest import KEYS, start_server
from tests.acceptance.helpers import ce_batch, train

CHILD = """
import sys, tinker
sys.path.insert(0, {root!r})
from tests.acceptance.helpers import ce_batch
service = tinker.ServiceClient(base_url={url!r}, api_key={key!r})
client = service.create_lora_training_client(base_model={model!r}, rank=4, seed=41).result()
adam = tinker.AdamParams(learning_rate=1e-2)
client.forward_backward(ce_batch(), "cross_entropy").result(); client.optim_step(adam).result()
print(client.model_id, flush=True)
while True:  # mid-training when killed
    client.forward_backward(ce_batch(), "cross_entropy"); client.optim_step(adam).result()
"""


def _wait_for(predicate, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_killed_client_expires_frees_its_adapter_and_its_state_resumes(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'store'}"
    server = start_server(tiny_model_dir, store, args=["--session-expiry-s", "2"],
                          env={"LORAPLANE_GATEWAY__METRICS_TOKEN": "scrape"})
    headers = {"X-API-Key": KEYS["alice"]}
    try:
        root = str(Path(__file__).resolve().parents[2])
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(root=root, url=server.url, key=KEYS["alice"], model=server.model)],
            stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        model_id = child.stdout.readline().strip()
        assert model_id, "the client did not start"
        child.kill()
        child.wait()
        # A raw-protocol session of the same tenant that never heartbeats: its pending future must
        # fail with Tinker's failed-future answer once it expires.
        sid = httpx.post(f"{server.url}/api/v1/create_session", headers=headers, json={}).json()["session_id"]
        raw_model = httpx.post(f"{server.url}/api/v1/create_model", headers=headers, json={
            "session_id": sid, "model_seq_id": 0, "base_model": server.model, "lora_config": {"rank": 4}}).json()
        rest = tinker.RestClient(base_url=server.url, api_key=KEYS["alice"])
        expired_path = f"tinker://{model_id}/weights/session-expired"
        _wait_for(lambda: expired_path in [c.tinker_path for c in rest.list_checkpoints(model_id).result().checkpoints])
        def failed_future() -> dict | None:
            answer = httpx.post(f"{server.url}/api/v1/retrieve_future", headers=headers,
                                json={"request_id": raw_model["request_id"]}).json()
            return answer if "error" in answer else None

        answer = _wait_for(failed_future)
        assert answer["category"] == "user" and "expired" in answer["error"]
        # The adapters go (the runs' jobs are deleted once their last states are saved), so their
        # models become unknown.
        for gone in (model_id, f"{sid}:train:0"):
            _wait_for(lambda gone=gone: httpx.post(f"{server.url}/api/v1/get_info", headers=headers,
                                                   json={"model_id": gone}).status_code == 404)
        assert httpx.post(f"{server.url}/api/v1/session_heartbeat", headers=headers,
                          json={"session_id": sid}).status_code == 410
        metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer scrape"}).text
        assert _expired_count(metrics) >= 2
    finally:
        server.stop()
    again = start_server(tiny_model_dir, store)
    try:
        service = tinker.ServiceClient(base_url=again.url, api_key=KEYS["alice"])
        resumed = service.create_training_client_from_state_with_optimizer(expired_path).result()
        losses = train(resumed, 2, data=ce_batch())
        assert all(x == x for x in losses)
        service.close("success").result()
    finally:
        again.stop()


def _expired_count(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("loraplane_gateway_sessions_expired_total"):
            return float(line.split()[-1])
    pytest.fail("no loraplane_gateway_sessions_expired_total in /metrics")
