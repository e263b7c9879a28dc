"""Runtime pods as the operator reads them, and the pool's view of their health."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loraplane.control.pool import RuntimePool
from loraplane.core import scheduling


def pod(*, phase: str = "Running", ready: str = "True", ip: str | None = "10.0.0.5",
        url: str | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "rt-0", "annotations": {}}
    if url:
        meta["annotations"][scheduling.RUNTIME_URL_ANNOTATION] = url
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


@pytest.mark.parametrize(
    ("selector", "labels"),
    [
        ("loraplane.dev/component=runtime", {"loraplane.dev/component": "runtime"}),
        ("a=b, c==d", {"a": "b", "c": "d"}),
        ("gpu", {"gpu": None}),
        ("", {}),
    ],
)
def test_parse_selector(selector: str, labels: dict[str, str | None]) -> None:
    assert scheduling.parse_selector(selector) == labels


@pytest.mark.parametrize(
    ("body", "address"),
    [
        (pod(), "http://10.0.0.5:8001"),
        (pod(url="http://127.0.0.1:5000/"), "http://127.0.0.1:5000"),
        (pod(ip=None), None),
        (pod(ip=None, url="http://x:1"), "http://x:1"),
    ],
)
def test_pod_address_prefers_the_annotation(body: dict[str, Any], address: str | None) -> None:
    assert scheduling.pod_address(body, 8001) == address


@pytest.mark.parametrize(
    ("body", "ready"),
    [
        (pod(), True),
        (pod(ready="False"), False),
        (pod(phase="Pending"), False),
        (pod(deleting=True), False),
        ({"metadata": {"name": "x"}}, False),
    ],
)
def test_pod_is_ready(body: dict[str, Any], ready: bool) -> None:
    assert scheduling.pod_is_ready(body) is ready


class ScriptedCalls:
    """Answers /readyz from a dict: address -> body (None = unreachable)."""

    def __init__(self, answers: dict[str, dict[str, Any] | None]) -> None:
        self.answers = answers

    async def readyz(self, address: str) -> dict[str, Any] | None:
        return self.answers.get(address)

    async def adapters(self, address: str) -> list[dict[str, Any]] | None:
        return [{"adapter_id": "ns.j", "resident": True}] if self.answers.get(address) else None


def health(ready: bool = True, total: int = 1, free: int = 3) -> dict[str, Any]:
    return {"ready": ready, "base_model": "m", "adapters": {"total": total}, "capacity": {"free_slots": free}}


def test_pool_counts_a_pod_only_when_pod_and_readyz_are_ready() -> None:
    calls = ScriptedCalls({"http://a": health(), "http://b": health(ready=False), "http://c": None})
    pool = RuntimePool(port=8001, client=calls)  # type: ignore[arg-type]
    changes: list[int] = []
    pool.on_change(lambda: changes.append(1))
    for name in "abc":
        pool.pod_seen(name, pod(url=f"http://{name}"))
    pool.pod_seen("d", pod(url="http://a", ready="False"))
    asyncio.run(pool.poll_once())
    assert [c.pod for c in pool.candidates() if c.ready] == ["a"]
    assert [pool.is_ready(n) for n in "abcd"] == [True, False, False, False]
    a = next(c for c in pool.candidates() if c.pod == "a")
    assert (a.base_model, a.adapters, a.free_slots) == ("m", 1, 3)
    assert changes  # readiness changed: job loops are woken
    assert pool.adapter("a", "ns.j") == {"adapter_id": "ns.j", "resident": True}
    assert pool.adapter("a", "other") is None and pool.adapter("c", "ns.j") is None

    calls.answers["http://a"] = None  # the process died
    changes.clear()
    asyncio.run(pool.poll_once())
    assert not pool.is_ready("a") and changes


def test_reserve_counts_a_placement_until_the_next_poll() -> None:
    pool = RuntimePool(port=8001, client=ScriptedCalls({"http://a": health(total=0, free=1)}))  # type: ignore[arg-type]
    pool.pod_seen("a", pod(url="http://a"))
    asyncio.run(pool.poll_once())
    pool.reserve("a")
    a = pool.candidates()[0]
    assert (a.adapters, a.free_slots) == (1, 0)


def test_a_deleted_pod_is_no_runtime() -> None:
    pool = RuntimePool(port=8001, client=ScriptedCalls({"http://a": health()}))  # type: ignore[arg-type]
    pool.pod_seen("a", pod(url="http://a"))
    asyncio.run(pool.poll_once())
    pool.pod_gone("a")
    assert pool.candidates() == [] and not pool.is_ready("a")
