"""The server's logs at --log-level info: access lines, error reasons, the request id carried to the
runtime, and no API key anywhere."""

from __future__ import annotations

import time

import httpx
import tinker

from tests.acceptance.conftest import KEYS, Server
from tests.acceptance.helpers import ce_batch


def _lines_with(server: Server, needle: str, timeout_s: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [line for line in list(server.log) if needle in line]
        if found:
            return found
        time.sleep(0.05)
    return []


def test_sdk_calls_are_logged_with_tenant_model_and_status_and_never_the_key(server: Server) -> None:
    service = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=51).result()
    client.forward_backward(ce_batch(), "cross_entropy").result()
    with_model = _lines_with(server, "route=/api/v1/forward_backward status=200")
    assert any("tenant=alice" in line and f"model_id={client.model_id}" in line for line in with_model)
    service.close("success").result()
    assert all(key not in line for line in list(server.log) for key in KEYS.values())


def test_an_error_is_logged_with_its_reason_by_gateway_and_runtime_under_one_request_id(server: Server) -> None:
    headers = {"X-API-Key": KEYS["alice"], "X-Request-ID": "acceptance-0001"}
    service = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=52).result()
    owner = client.model_id.replace(":", "-")
    r = httpx.post(f"{server.url}/api/v1/retrieve_future", headers=headers,
                   json={"request_id": f"{owner}.runtime-0.optim.nosuchop"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "acceptance-0001"
    [access] = _lines_with(server, "access request_id=acceptance-0001")
    assert "status=404" in access and "reason=" in access and "nosuchop" in access
    runtime = _lines_with(server, "runtime answered 404")
    assert any("request_id=acceptance-0001" in line and "nosuchop" in line for line in runtime)
    service.close("success").result()
