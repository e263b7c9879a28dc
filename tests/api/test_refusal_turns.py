"""A tenant's turn at the gateway is held after a refusal from behind it (a runtime's 429), not only after its own."""

from __future__ import annotations

import asyncio
from collections.abc import Generator

import pytest

from loraplane.api import guards


class Downstream:
    """The app behind the rate limit: answers each request with the next queued status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.entered: list[str] = []

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        self.entered.append(scope[guards.TENANT_KEY])
        await send({"type": "http.response.start", "status": self.statuses.pop(0), "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


class Yield:
    """One trip through the event loop (asyncio.sleep is replaced in these tests)."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def request(tenant: str) -> dict:
    return {"type": "http", "path": "/api/v1/forward_backward", guards.TENANT_KEY: tenant}


async def discard(_: dict) -> None:
    pass


@pytest.mark.parametrize(("first", "holds", "entered_while_held"), [
    (429, [0.25], ["bob", "alice"]),  # the refused request keeps bob's only turn; alice goes on
    (200, [], ["bob", "alice", "bob"]),  # an answered request frees it at once
])
def test_a_runtime_refusal_keeps_the_tenants_turn_for_the_refusal_hold(
        monkeypatch: pytest.MonkeyPatch, first: int, holds: list[float], entered_while_held: list[str]) -> None:
    slept: list[float] = []
    release = asyncio.Event()

    async def held(seconds: float) -> None:
        slept.append(seconds)
        await release.wait()

    monkeypatch.setattr(guards.asyncio, "sleep", held)
    app = Downstream([first, 200, 200])
    limit = guards.RateLimit(app, rate_per_s=1000, burst=1000, exempt=frozenset(), concurrency=1,
                             refusal_hold_s=0.25)

    async def run() -> None:
        tasks = [asyncio.create_task(limit(request(t), None, discard)) for t in ("bob", "bob", "alice")]
        for _ in range(10):
            await Yield()
        assert sorted(app.entered) == sorted(entered_while_held)
        assert slept == holds
        release.set()
        await asyncio.gather(*tasks)
        assert sorted(app.entered) == ["alice", "bob", "bob"]

    asyncio.run(run())
