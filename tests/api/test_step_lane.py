"""The per-step calls take the gateway's short lane (`asgi.fastlane.FastLane`) and still answer like any route:
errors are JSON naming the field, metrics label them by route, other methods fall through."""

from __future__ import annotations

import httpx
import pytest

from loraplane.api.app import API_PREFIX, STEP_PATHS, step_routes
from loraplane.api.gateway import Gateway
from tests.api.conftest import METRICS

ALICE = {"X-API-Key": "tml-alice"}

pytestmark = pytest.mark.anyio





def test_every_step_path_has_its_route() -> None:
    routes = step_routes()
    assert sorted(routes) == sorted(API_PREFIX + p for p in STEP_PATHS)
    assert all(r.path == path.removeprefix(API_PREFIX) for path, r in routes.items())


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "field"),
    [
        ("/api/v1/optim_step", {"content": b""}, 400, "body"),
        ("/api/v1/optim_step", {"content": b"{not json"}, 400, "body"),
        ("/api/v1/optim_step", {"json": [1, 2]}, 400, "body"),
        ("/api/v1/optim_step", {"json": {"seq_id": 1}}, 400, "model_id"),
        ("/api/v1/retrieve_future", {"json": {"request_id": 7}}, 400, "request_id"),
        ("/api/v1/forward_backward", {"content": b"\x0a\xff"}, 400, "body"),
    ],
)
async def test_bad_step_bodies_get_400_naming_the_field(
    client: httpx.AsyncClient, path: str, kwargs: dict, status: int, field: str
) -> None:
    resp = await client.post(path, headers=ALICE, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.json()["field"] == field
    assert resp.headers["x-should-retry"] == "false"


async def test_the_key_is_checked_before_the_body(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/v1/optim_step", content=b"{not json")
    assert resp.status_code == 401 and resp.json()["category"] == "user"


async def test_other_methods_fall_through_to_the_router(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/v1/retrieve_future", headers=ALICE)
    assert resp.status_code == 405 and resp.json()["detail"]


async def test_unexpected_errors_are_a_json_500(client: httpx.AsyncClient, gateway: Gateway,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(gateway, "owned_runtime", broken)
    sid = (await client.post("/api/v1/create_session", json={"tags": []}, headers=ALICE)).json()["session_id"]
    body = {"model_id": f"{sid}:train:0", "seq_id": 1}
    resp = await client.post("/api/v1/optim_step", json=body, headers=ALICE)
    assert resp.status_code == 500
    assert resp.json()["category"] == "server" and "boom" in resp.json()["detail"]


async def test_step_calls_are_counted_under_their_route(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/retrieve_future", json={}, headers=ALICE)
    metrics = (await client.get("/metrics", headers=METRICS)).text
    assert 'loraplane_gateway_requests_total{route="/retrieve_future",status="4xx"} 1.0' in metrics
