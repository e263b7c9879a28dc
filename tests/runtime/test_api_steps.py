"""The runtime's per-step lane: which requests take it, how `wait` is read, and that its errors
are the same JSON answers as the routes give (the full calls are covered by test_api.py)."""

from __future__ import annotations

import httpx
import pytest

from loraplane.core import errors
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import api


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/adapters/a.b/ops", ("submit", "a.b")),
        ("POST", "/v1/adapters/s-1:train:0/ops", ("submit", "s-1:train:0")),
        ("GET", "/v1/results/r-7", ("result", "r-7")),
        ("GET", "/v1/adapters/a/ops", None),
        ("POST", "/v1/results/r-7", None),
        ("POST", "/v1/adapters//ops", None),
        ("POST", "/v1/adapters/a/b/ops", None),
        ("GET", "/v1/results/", None),
        ("GET", "/v1/results/a/b", None),
        ("POST", "/v1/adapters/a/train", None),
        ("POST", "/v1/adapters", None),
    ],
)
def test_step_call_matches_only_the_two_per_step_routes(method: str, path: str, expected: object) -> None:
    assert api.step_call(method, path) == expected


@pytest.mark.parametrize(("query", "seconds"), [(None, 0.0), ("0", 0.0), ("2.5", 2.5), ("60", 60.0), ("30.0", 30.0)])
def test_wait_is_read_in_seconds(query: str | None, seconds: float) -> None:
    assert api.wait_of(query) == seconds


@pytest.mark.parametrize("query", ["-1", "60.5", "nan", "inf", "soon", ""])
def test_a_bad_wait_is_refused_naming_it(query: str) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        api.wait_of(query)
    assert caught.value.field == "wait"


@pytest.fixture
def loading_runtime() -> httpx.AsyncClient:
    """The runtime app before its model is loaded (no executor)."""
    app = api.create_app(api.RuntimeState(settings=RuntimeSettings(device="cpu")))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://runtime")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "status", "field"),
    [
        ("GET", "/v1/results/r-1?wait=99", 503, None),
        ("POST", "/v1/adapters/a/ops", 503, None),
        ("GET", "/v1/results/r-1?wait=1", 503, None),
    ],
)
async def test_lane_errors_are_json_answers(loading_runtime: httpx.AsyncClient, method: str, path: str,
                                            status: int, field: str | None) -> None:
    async with loading_runtime as http:
        response = await http.request(method, path, json={"seq_id": 1, "op": "optim_step"})
    assert response.status_code == status
    assert response.json()["detail"] and response.json().get("field") == field


@pytest.mark.anyio
async def test_a_bad_wait_is_a_400_through_the_lane() -> None:
    state = api.RuntimeState(settings=RuntimeSettings(device="cpu"))
    state.executor = object()  # type: ignore[assignment]  # serving: the wait is refused before any lookup
    transport = httpx.ASGITransport(app=api.create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as http:
        response = await http.get("/v1/results/r-1", params={"wait": 99})
    assert response.status_code == 400 and response.json()["field"] == "wait"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
