"""The in-process transport to runtime apps (single-node): requests arrive whole, answers come back
whole, an unknown runtime is a connection error and an app's crash reaches the caller."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from loraplane.clients.runtime import RuntimeClient, RuntimeUnavailable
from loraplane.core import errors
from loraplane.singlenode.server import RuntimeTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def echo_app(seen: list[dict[str, Any]]) -> Any:
    """An ASGI app that records the scope and body, and answers in two body chunks."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        seen.append({"path": scope["path"], "query": scope["query_string"], "method": scope["method"],
                     "headers": dict(scope["headers"]), "body": message["body"], "more": message["more_body"]})
        if scope["path"] == "/boom":
            raise RuntimeError("app crashed")
        status = 404 if scope["path"] == "/missing" else 202
        body = b'{"detail": "no such thing", "field": "adapter_id"}' if status == 404 else b'{"request_id": "r-1"}'
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body[:5], "more_body": True})
        await send({"type": "http.response.body", "body": body[5:]})

    return app


async def test_the_body_arrives_in_one_message_and_the_answer_in_one_response() -> None:
    seen: list[dict[str, Any]] = []
    async with RuntimeClient("http://runtime-0", transport=RuntimeTransport({"runtime-0": echo_app(seen)})) as c:
        assert await c.submit_forward_backward("a b", b"\x0a\x01x") == "r-1"
    assert seen == [{"path": "/v1/adapters/a b/ops", "query": b"", "method": "POST",
                     "headers": seen[0]["headers"], "body": b"\x0a\x01x", "more": False}]
    assert seen[0]["headers"][b"content-type"] == b"application/x-protobuf"


async def test_query_strings_reach_the_app() -> None:
    seen: list[dict[str, Any]] = []
    transport = RuntimeTransport({"runtime-0": echo_app(seen)})
    response = await transport.handle_async_request(httpx.Request("GET", "http://runtime-0/v1/results/x?wait=2.5"))
    assert response.status_code == 202 and response.json() == {"request_id": "r-1"}
    assert seen[0]["path"] == "/v1/results/x" and seen[0]["query"] == b"wait=2.5"


async def test_error_answers_become_the_error_classes() -> None:
    transport = RuntimeTransport({"runtime-0": echo_app([])})
    async with RuntimeClient("http://runtime-0", transport=transport) as c:
        with pytest.raises(errors.NotFound) as caught:
            await c._request("GET", "/missing")
    assert caught.value.field == "adapter_id"


async def test_an_unknown_runtime_is_unreachable() -> None:
    async with RuntimeClient("http://runtime-9", transport=RuntimeTransport({"runtime-0": echo_app([])})) as c:
        with pytest.raises(RuntimeUnavailable):
            await c.health()


async def test_an_app_crash_reaches_the_caller() -> None:
    transport = RuntimeTransport({"runtime-0": echo_app([])})
    with pytest.raises(RuntimeError, match="app crashed"):
        await transport.handle_async_request(httpx.Request("POST", "http://runtime-0/boom", content=b"x"))
