"""Fault injection and request counting, armed from the tests through the emulator object."""

from __future__ import annotations

import json
import time

import httpx

from tests.kube.conftest import WIDGETS, WatchReader
from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.samples import widget

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


def test_drop_watches_closes_every_open_stream(client: httpx.Client, kube_emulator: KubeEmulator) -> None:
    with client.stream("GET", CONFIGMAPS, params={"watch": "true", "resourceVersion": "1"}) as first, \
            client.stream("GET", "/api/v1/namespaces", params={"watch": "true", "resourceVersion": "1"}) as second:
        assert kube_emulator.drop_watches() == 2
        assert [line for line in first.iter_lines() if line] == []
        replayed = [json.loads(line)["object"]["metadata"]["name"] for line in second.iter_lines() if line]
        assert replayed == ["kube-system", "kube-public"]  # the backlog after version 1, then the end
    assert kube_emulator.drop_watches() == 0


def test_dropped_watch_resumes_without_loss(client: httpx.Client, kube_emulator: KubeEmulator) -> None:
    version = client.get(CONFIGMAPS).json()["metadata"]["resourceVersion"]
    with client.stream("GET", CONFIGMAPS, params={"watch": "true", "resourceVersion": version}) as response:
        client.post(CONFIGMAPS, json={"metadata": {"name": "a"}})
        lines = response.iter_lines()
        seen = json.loads(next(lines))
        kube_emulator.drop_watches()
        assert [line for line in lines if line] == []
    client.post(CONFIGMAPS, json={"metadata": {"name": "b"}})
    resume = seen["object"]["metadata"]["resourceVersion"]
    with client.stream("GET", CONFIGMAPS, params={"watch": "true", "resourceVersion": resume}) as response:
        names = [json.loads(next(response.iter_lines()))["object"]["metadata"]["name"]]
    assert names == ["b"]


def test_next_watches_get_410(client: httpx.Client, kube_emulator: KubeEmulator, read_watch: WatchReader) -> None:
    client.post(CONFIGMAPS, json={"metadata": {"name": "a"}})
    kube_emulator.fail_next_watches(1)
    failed = read_watch(CONFIGMAPS, 5)
    assert [(e["type"], e["object"]["code"]) for e in failed] == [("ERROR", 410)]
    assert read_watch(CONFIGMAPS, 1)[0]["type"] == "ADDED"


def test_next_lists_get_410(client: httpx.Client, kube_emulator: KubeEmulator) -> None:
    kube_emulator.fail_next_lists(2)
    codes = [client.get(CONFIGMAPS).status_code for _ in range(3)]
    assert codes == [410, 410, 200]
    kube_emulator.fail_next_lists(1)
    body = client.get(CONFIGMAPS).json()
    assert body["kind"] == "Status" and body["reason"] == "Expired"


def test_conflict_storm_hits_only_the_chosen_object(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("hot"))
    client.post(WIDGETS, json=widget("cold"))
    crds.conflict_next_writes(3, plural="widgets", name="hot")
    assert client.patch(f"{WIDGETS}/cold", json={"spec": {"size": 2}}, headers=MERGE).status_code == 200
    codes = [client.patch(f"{WIDGETS}/hot", json={"spec": {"size": 2}}, headers=MERGE).status_code for _ in range(4)]
    assert codes == [409, 409, 409, 200]
    assert client.get(f"{WIDGETS}/hot").status_code == 200  # reads are never conflicted


def test_conflicts_also_hit_puts_and_status_writes(client: httpx.Client, crds: KubeEmulator) -> None:
    current = client.post(WIDGETS, json=widget("w")).json()
    crds.conflict_next_writes(2)
    assert client.put(f"{WIDGETS}/w", json=current).json()["reason"] == "Conflict"
    assert client.patch(f"{WIDGETS}/w/status", json={"status": {"a": 1}}, headers=MERGE).status_code == 409
    assert client.patch(f"{WIDGETS}/w/status", json={"status": {"a": 1}}, headers=MERGE).status_code == 200


def test_error_injection_matches_verb_and_path(client: httpx.Client, kube_emulator: KubeEmulator) -> None:
    client.post(CONFIGMAPS, json={"metadata": {"name": "a"}})
    kube_emulator.fail_next_requests(2, code=503, verb="get", path=r"/configmaps/a$")
    assert client.get(CONFIGMAPS).status_code == 200  # a list, not a get
    first = client.get(f"{CONFIGMAPS}/a")
    assert first.status_code == 503 and first.json()["reason"] == "ServiceUnavailable"
    assert client.get(f"{CONFIGMAPS}/a").status_code == 503
    assert client.get(f"{CONFIGMAPS}/a").status_code == 200


def test_error_injection_without_filters_hits_the_next_request(client: httpx.Client,
                                                               kube_emulator: KubeEmulator) -> None:
    kube_emulator.fail_next_requests(1)
    response = client.post(CONFIGMAPS, json={"metadata": {"name": "a"}})
    assert response.status_code == 500 and response.json()["reason"] == "InternalError"
    assert client.get(f"{CONFIGMAPS}/a").status_code == 404  # the failed create did nothing


def test_latency_delays_every_request(client: httpx.Client, kube_emulator: KubeEmulator) -> None:
    kube_emulator.set_latency(0.2)
    started = time.monotonic()
    client.get("/version")
    assert time.monotonic() - started >= 0.2
    kube_emulator.set_latency(0)
    started = time.monotonic()
    client.get("/version")
    assert time.monotonic() - started < 0.2


def test_requests_are_counted_by_verb_and_path(client: httpx.Client, kube_emulator: KubeEmulator,
                                               read_watch: WatchReader) -> None:
    kube_emulator.reset_faults()
    client.post(CONFIGMAPS, json={"metadata": {"name": "a"}})
    client.get(f"{CONFIGMAPS}/a")
    client.get(f"{CONFIGMAPS}/a")
    client.get(CONFIGMAPS)
    client.patch(f"{CONFIGMAPS}/a", json={"data": {}}, headers=MERGE)
    read_watch(CONFIGMAPS, 1)
    client.delete(f"{CONFIGMAPS}/a")
    counts = kube_emulator.request_counts()
    assert counts[("create", CONFIGMAPS)] == 1
    assert counts[("get", f"{CONFIGMAPS}/a")] == 2
    assert counts[("list", CONFIGMAPS)] == 1
    assert counts[("watch", CONFIGMAPS)] == 1
    assert counts[("patch", f"{CONFIGMAPS}/a")] == 1
    assert counts[("delete", f"{CONFIGMAPS}/a")] == 1
    assert kube_emulator.request_count() == 7
    assert kube_emulator.request_count(path=r"/configmaps/a$") == 4
    kube_emulator.reset_faults()
    assert kube_emulator.request_count() == 0
