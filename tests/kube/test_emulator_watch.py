"""Watch streams: initial events, resume without loss or replay, bookmarks, timeouts, 410 Gone, selectors."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.kube.conftest import WatchReader
from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.store import Event
from tests.kube.emulator.watching import translate

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


def _summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["type"], event["object"]["metadata"].get("name", "")) for event in events]


def test_watch_without_a_version_starts_with_the_current_objects(client: httpx.Client, read_watch: WatchReader) -> None:
    client.post(CONFIGMAPS, json={"metadata": {"name": "a"}})
    client.post(CONFIGMAPS, json={"metadata": {"name": "b"}})

    def change() -> None:
        client.patch(f"{CONFIGMAPS}/a", json={"data": {"k": "v"}}, headers=MERGE)
        client.delete(f"{CONFIGMAPS}/b")

    events = read_watch(CONFIGMAPS, 4, before_read=change)
    assert _summary(events) == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert events[2]["object"]["data"] == {"k": "v"}
    assert events[0]["object"]["kind"] == "ConfigMap" and events[0]["object"]["apiVersion"] == "v1"


@pytest.mark.parametrize("flag", ["true", "1", "True"])
def test_watch_accepts_both_flag_spellings(client: httpx.Client, flag: str) -> None:
    client.post(CONFIGMAPS, json={"metadata": {"name": "a"}})
    with client.stream("GET", CONFIGMAPS, params={"watch": flag, "timeoutSeconds": "1"}) as response:
        first = next(response.iter_lines())
    assert '"ADDED"' in first


def test_resuming_from_a_version_neither_loses_nor_repeats_events(client: httpx.Client,
                                                                  read_watch: WatchReader) -> None:
    listed = client.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]
    versions = [client.post(CONFIGMAPS, json={"metadata": {"name": n}}).json()["metadata"]["resourceVersion"]
                for n in ("a", "b", "c")]
    first = read_watch(CONFIGMAPS, 2, resourceVersion=listed)
    assert _summary(first) == [("ADDED", "a"), ("ADDED", "b")]
    resumed = read_watch(CONFIGMAPS, 2, before_read=lambda: client.post(CONFIGMAPS, json={"metadata": {"name": "d"}}),
                         resourceVersion=first[-1]["object"]["metadata"]["resourceVersion"])
    assert _summary(resumed) == [("ADDED", "c"), ("ADDED", "d")]
    assert resumed[0]["object"]["metadata"]["resourceVersion"] == versions[2]


def test_events_of_other_namespaces_and_resources_are_not_sent(client: httpx.Client, read_watch: WatchReader) -> None:
    client.post("/api/v1/namespaces", json={"metadata": {"name": "other"}})
    version = client.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]
    client.post("/api/v1/namespaces/other/configmaps", json={"metadata": {"name": "elsewhere"}})
    client.post("/api/v1/namespaces/default/secrets", json={"metadata": {"name": "secret"}})
    client.post(CONFIGMAPS, json={"metadata": {"name": "here"}})
    assert _summary(read_watch(CONFIGMAPS, 1, resourceVersion=version)) == [("ADDED", "here")]
    everywhere = read_watch("/api/v1/configmaps", 2, resourceVersion=version)
    assert _summary(everywhere) == [("ADDED", "elsewhere"), ("ADDED", "here")]


def test_too_old_version_is_an_error_event_with_410(client: httpx.Client, kube_emulator: KubeEmulator,
                                                    read_watch: WatchReader) -> None:
    old = client.post(CONFIGMAPS, json={"metadata": {"name": "a"}}).json()["metadata"]["resourceVersion"]
    client.post(CONFIGMAPS, json={"metadata": {"name": "b"}})
    kube_emulator.compact()
    events = read_watch(CONFIGMAPS, 5, resourceVersion=old)  # the server ends the stream after the error
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status" and status["code"] == 410 and status["reason"] == "Expired"
    assert status["message"].startswith("too old resource version")


def test_bounded_history_forgets_the_oldest_events() -> None:
    with KubeEmulator(history_size=3) as emulator, httpx.Client(base_url=emulator.url, timeout=5) as http:
        first = http.post(CONFIGMAPS, json={"metadata": {"name": "a"}}).json()["metadata"]["resourceVersion"]
        for name in "bcde":  # a and b drop out of a three-event history
            http.post(CONFIGMAPS, json={"metadata": {"name": name}})
        with http.stream("GET", CONFIGMAPS, params={"watch": "1", "resourceVersion": first}) as response:
            line = next(response.iter_lines())
        assert '"code": 410' in line


def test_bookmarks_carry_the_current_version() -> None:
    with KubeEmulator(bookmark_interval=0.05) as emulator, httpx.Client(base_url=emulator.url, timeout=5) as http:
        version = http.post(CONFIGMAPS, json={"metadata": {"name": "a"}}).json()["metadata"]["resourceVersion"]
        with http.stream("GET", CONFIGMAPS, params={"watch": "true", "allowWatchBookmarks": "true",
                                                    "resourceVersion": version}) as response:
            line = next(line for line in response.iter_lines() if line)
    event = json.loads(line)
    assert event["type"] == "BOOKMARK"
    assert event["object"] == {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": version}}


def test_timeout_seconds_ends_the_stream_with_a_bookmark(client: httpx.Client, read_watch: WatchReader) -> None:
    version = client.post(CONFIGMAPS, json={"metadata": {"name": "a"}}).json()["metadata"]["resourceVersion"]
    started = time.monotonic()
    events = read_watch(CONFIGMAPS, 10, resourceVersion=version, timeoutSeconds="1", allowWatchBookmarks="true")
    assert 0.9 <= time.monotonic() - started < 4
    assert _summary(events) == [("BOOKMARK", "")]


def test_send_initial_events_ends_with_an_annotated_bookmark(client: httpx.Client, read_watch: WatchReader) -> None:
    client.post(CONFIGMAPS, json={"metadata": {"name": "a"}})
    events = read_watch(CONFIGMAPS, 2, sendInitialEvents="true", allowWatchBookmarks="true",
                        resourceVersionMatch="NotOlderThan")
    assert [event["type"] for event in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_selector_watch_reports_objects_entering_and_leaving(client: httpx.Client, read_watch: WatchReader) -> None:
    version = client.post(CONFIGMAPS, json={"metadata": {"name": "a", "labels": {"app": "no"}}}).json()[
        "metadata"]["resourceVersion"]
    for app in ("yes", "yes", "no"):
        client.patch(f"{CONFIGMAPS}/a", json={"metadata": {"labels": {"app": app}}, "data": {"v": app + "1"}},
                     headers=MERGE)
    client.post(CONFIGMAPS, json={"metadata": {"name": "z", "labels": {"app": "yes"}}})
    events = read_watch(CONFIGMAPS, 3, resourceVersion=version, labelSelector="app=yes")
    assert _summary(events) == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "z")]


def _event(kind: str, old: dict | None, new: dict) -> Event:
    return Event(1, kind, ("", "configmaps"), "default", old, new)


YES, NO = {"metadata": {"labels": {"a": "1"}}}, {"metadata": {}}


@pytest.mark.parametrize(("event", "expected"), [
    (_event("ADDED", None, YES), "ADDED"),
    (_event("ADDED", None, NO), None),
    (_event("MODIFIED", YES, YES), "MODIFIED"),
    (_event("MODIFIED", NO, YES), "ADDED"),
    (_event("MODIFIED", YES, NO), "DELETED"),
    (_event("MODIFIED", NO, NO), None),
    (_event("DELETED", YES, YES), "DELETED"),
    (_event("DELETED", NO, NO), None),
])
def test_filtered_watches_translate_event_types(event: Event, expected: str | None) -> None:
    assert translate(event, lambda obj: "a" in obj["metadata"].get("labels", {})) == expected


def test_bad_selector_fails_the_watch_before_it_starts(client: httpx.Client) -> None:
    response = client.get(CONFIGMAPS, params={"watch": "true", "fieldSelector": "spec.x=1"})
    assert response.status_code == 400


def test_stop_closes_open_watches() -> None:
    emulator = KubeEmulator().start()
    with httpx.Client(base_url=emulator.url, timeout=5) as http, \
            http.stream("GET", CONFIGMAPS, params={"watch": "true", "resourceVersion": "1"}) as response:
        emulator.stop()
        assert list(response.iter_lines()) in ([], [""])


def test_a_watch_whose_client_leaves_is_unsubscribed(kube_emulator: KubeEmulator, client: httpx.Client) -> None:
    with client.stream("GET", CONFIGMAPS, params={"watch": "true", "resourceVersion": "3"}):
        assert len(kube_emulator.cluster.store.subscriptions) == 1
    client.close()
    deadline = time.monotonic() + 2
    while kube_emulator.cluster.store.subscriptions:
        assert time.monotonic() < deadline, "the server kept a subscription for a closed connection"
        time.sleep(0.01)


def test_exact_list_at_a_compacted_version_is_410_expired(client: httpx.Client, kube_emulator: KubeEmulator) -> None:
    old = client.post(CONFIGMAPS, json={"metadata": {"name": "a"}}).json()["metadata"]["resourceVersion"]
    params = {"resourceVersion": old, "resourceVersionMatch": "Exact"}
    assert client.get(CONFIGMAPS, params=params).status_code == 200
    client.post(CONFIGMAPS, json={"metadata": {"name": "b"}})
    kube_emulator.compact()  # keeps only the newest version (b's)
    response = client.get(CONFIGMAPS, params=params)
    assert response.status_code == 410 and response.json()["reason"] == "Expired"
    assert client.get(CONFIGMAPS, params={"resourceVersion": old}).status_code == 200  # NotOlderThan is served
