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
        status = self.statuses.pop(0)
        headers = [(b"retry-after", b"1"), (b"retry-after-ms", b"600")] if status == 429 else []
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


class GuardsAsyncio:
    """`asyncio` as the guards module sees it, with `sleep` replaced.

    Patching `asyncio.sleep` itself would also reach threads that other tests left running (an
    SDK's heartbeat loop), which would then await this test's event from their own loops.
    """

    def __init__(self, sleep: object) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str) -> object:
        return getattr(asyncio, name)


class Yield:
    """One trip through the event loop (asyncio.sleep is replaced in these tests)."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def request(tenant: str) -> dict:
    return {"type": "http", "path": "/api/v1/forward_backward", guards.TENANT_KEY: tenant}


async def discard(_: dict) -> None:
    pass


@pytest.mark.parametrize(("first", "holds", "entered_while_held"), [
    (429, [0.6], ["bob", "alice"]),  # the refused request keeps bob's only turn for its Retry-After
    (200, [], ["bob", "alice", "bob"]),  # an answered request frees it at once
])
def test_a_runtime_refusal_keeps_the_tenants_turn_for_its_retry_after(
        monkeypatch: pytest.MonkeyPatch, first: int, holds: list[float], entered_while_held: list[str]) -> None:
    slept: list[float] = []
    release = asyncio.Event()

    async def held(seconds: float) -> None:
        slept.append(seconds)
        await release.wait()

    monkeypatch.setattr(guards, "asyncio", GuardsAsyncio(held))
    app = Downstream([first, 200, 200])
    limit = guards.RateLimit(app, rate_per_s=1000, burst=1000, exempt=frozenset(), concurrency=1,
                             refusal_hold_s=2.0)

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


@pytest.mark.parametrize(("headers", "most_s", "hold_s"), [
    ([(b"Retry-After", b"1"), (b"retry-after-ms", b"250")], 1.0, 0.25),  # the finer of the two
    ([(b"retry-after", b"3")], 1.0, 1.0),  # at most the setting
    ([(b"retry-after", b"0.5")], 1.0, 0.5),
    ([], 0.7, 0.7),  # none given: the setting
    ([(b"retry-after", b"soon")], 0.7, 0.7),  # unreadable: the setting
    ([(b"retry-after-ms", b"-5"), (b"retry-after", b"2")], 5.0, 2.0),
])
def test_the_hold_is_the_runtimes_retry_after_up_to_the_setting(
        headers: list[tuple[bytes, bytes]], most_s: float, hold_s: float) -> None:
    assert guards.refusal_hold(headers, most_s) == pytest.approx(hold_s)


def test_a_refusal_is_counted_when_its_answer_is_sent_not_when_its_turn_is_released(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    from loraplane.api.tenant_metrics import TenantMetrics

    release = asyncio.Event()

    async def held(seconds: float) -> None:
        await release.wait()

    async def runtime_full(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 429, "headers": [(b"retry-after", b"1")]})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b'{"field": "max_queued_samples_per_tenant"}'})  # type: ignore[operator]

    monkeypatch.setattr(guards, "asyncio", GuardsAsyncio(held))
    registry = CollectorRegistry()
    app = TenantMetrics(guards.RateLimit(runtime_full, rate_per_s=1000, burst=1000, exempt=frozenset()), registry)
    answered: list[dict] = []

    async def client(message: dict) -> None:
        answered.append(message)

    def refusals() -> float | None:
        return registry.get_sample_value("loraplane_gateway_tenant_rejections_total",
                                         {"tenant": "bob", "limit": "max_queued_samples_per_tenant"})

    async def run() -> None:
        call = asyncio.create_task(app(request("bob"), None, client))
        for _ in range(10):
            await Yield()
        assert [m["type"] for m in answered] == ["http.response.start", "http.response.body"]
        assert not call.done()  # the turn is still held ...
        assert refusals() == 1  # ... and a scrape already sees the refusal
        release.set()
        await call
        assert refusals() == 1

    asyncio.run(run())
