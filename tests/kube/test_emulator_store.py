"""The store's history: compaction boundaries, and resumed watches under concurrent writes."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.fixtures import TOKEN
from tests.kube.emulator.store import ObjectStore, Subscription, TooOldResourceVersion

KEY = ("", "configmaps")


def _filled(history_size: int, writes: int) -> ObjectStore:
    store = ObjectStore(history_size)
    for index in range(writes):
        store.put(KEY, {"metadata": {"name": f"c{index}", "namespace": "default"}})
    return store


@pytest.mark.parametrize(("resume", "expected"), [
    (0, None), (1, None), (2, [3, 4, 5]), (3, [4, 5]), (5, []), (9, []),
])
def test_resume_points_inside_the_history_replay_exactly_the_later_events(resume: int,
                                                                          expected: list[int] | None) -> None:
    store = _filled(history_size=3, writes=5)  # keeps 3, 4, 5; version 2 was the last dropped
    assert store.compacted_rv == 2
    subscription = Subscription(KEY, None)
    if expected is None:
        with pytest.raises(TooOldResourceVersion):
            store.events_since(resume, subscription)
    else:
        assert [event.resource_version for event in store.events_since(resume, subscription)] == expected


def test_events_reach_only_matching_subscriptions() -> None:
    store = ObjectStore()
    here, everywhere, other = Subscription(KEY, "default"), Subscription(KEY, None), Subscription(("", "pods"), None)
    for subscription in (here, everywhere, other):
        store.subscribe(subscription)
    store.put(KEY, {"metadata": {"name": "a", "namespace": "elsewhere"}})
    store.put(KEY, {"metadata": {"name": "b", "namespace": "default"}})
    assert (here.queue.qsize(), everywhere.queue.qsize(), other.queue.qsize()) == (1, 2, 0)


def test_reconnecting_watches_under_concurrent_writes_lose_and_repeat_nothing(kube_emulator: KubeEmulator) -> None:
    path, total = "/api/v1/namespaces/default/configmaps", 60
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=kube_emulator.url, headers=headers, timeout=5) as http:
        version = http.get(path).json()["metadata"]["resourceVersion"]

        def write() -> None:
            with httpx.Client(base_url=kube_emulator.url, headers=headers, timeout=5) as writer:
                for index in range(total):
                    writer.post(path, json={"metadata": {"name": f"c{index:03d}"}})

        writer_thread = threading.Thread(target=write)
        writer_thread.start()
        seen: list[tuple[str, int]] = []
        deadline = time.monotonic() + 30
        while len(seen) < total and time.monotonic() < deadline:
            params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "2"}
            with http.stream("GET", path, params=params) as response:
                for line in response.iter_lines():
                    if not line:
                        continue
                    obj = json.loads(line)["object"]
                    version = obj["metadata"]["resourceVersion"]
                    seen.append((obj["metadata"]["name"], int(version)))
                    if len(seen) % 7 == 0 or len(seen) == total:
                        break  # hang up mid-stream and resume from the last version seen
        writer_thread.join()
    assert [name for name, _ in seen] == [f"c{index:03d}" for index in range(total)]
    assert [rv for _, rv in seen] == sorted({rv for _, rv in seen})
