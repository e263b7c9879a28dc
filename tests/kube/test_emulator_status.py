"""The status subresource is kept apart from the main resource, and generation follows the spec only."""

from __future__ import annotations

import httpx

from tests.kube.conftest import WIDGETS
from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.samples import widget

MERGE = {"Content-Type": "application/merge-patch+json"}
GADGETS = "/apis/testing.loraplane.io/v1/gadgets"


def test_status_on_create_is_dropped(client: httpx.Client, crds: KubeEmulator) -> None:
    body = widget("w")
    body["status"] = {"phase": "Done"}
    assert "status" not in client.post(WIDGETS, json=body).json()


def test_status_writes_change_only_the_status(client: httpx.Client, crds: KubeEmulator) -> None:
    created = client.post(WIDGETS, json=widget("w")).json()
    patched = client.patch(f"{WIDGETS}/w/status", json={"status": {"phase": "Running"}, "spec": {"size": 9},
                                                        "metadata": {"labels": {"x": "y"}}}, headers=MERGE).json()
    assert patched["status"] == {"phase": "Running"}
    assert patched["spec"]["size"] == 1
    assert "labels" not in patched["metadata"]
    assert patched["metadata"]["generation"] == created["metadata"]["generation"] == 1
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


def test_status_put_replaces_the_status(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    current = client.patch(f"{WIDGETS}/w/status", json={"status": {"a": 1, "b": 2}}, headers=MERGE).json()
    current["status"] = {"c": 3}
    assert client.put(f"{WIDGETS}/w/status", json=current).json()["status"] == {"c": 3}
    assert client.get(f"{WIDGETS}/w/status").json()["status"] == {"c": 3}


def test_main_resource_writes_ignore_the_status(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    client.patch(f"{WIDGETS}/w/status", json={"status": {"phase": "Running"}}, headers=MERGE)
    patched = client.patch(f"{WIDGETS}/w", json={"status": {"phase": "Hacked"}, "spec": {"size": 3}},
                           headers=MERGE).json()
    assert patched["status"] == {"phase": "Running"}
    assert patched["spec"]["size"] == 3


def test_generation_moves_only_with_the_spec(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    generations = [
        client.patch(f"{WIDGETS}/w", json={"metadata": {"labels": {"a": "b"}}}, headers=MERGE),
        client.patch(f"{WIDGETS}/w", json={"metadata": {"annotations": {"c": "d"}}}, headers=MERGE),
        client.patch(f"{WIDGETS}/w/status", json={"status": {"x": 1}}, headers=MERGE),
        client.patch(f"{WIDGETS}/w", json={"spec": {"size": 2}}, headers=MERGE),
        client.patch(f"{WIDGETS}/w/status", json={"status": {"x": 2}}, headers=MERGE),
        client.patch(f"{WIDGETS}/w", json={"spec": {"size": 3}}, headers=MERGE),
    ]
    assert [r.json()["metadata"]["generation"] for r in generations] == [1, 1, 1, 2, 2, 3]


def test_without_a_status_subresource_status_is_content(client: httpx.Client, crds: KubeEmulator) -> None:
    body = {"apiVersion": "testing.loraplane.io/v1", "kind": "Gadget", "metadata": {"name": "g"},
            "status": {"phase": "New"}}
    assert client.post(GADGETS, json=body).json()["status"] == {"phase": "New"}
    patched = client.patch(f"{GADGETS}/g", json={"status": {"phase": "Old"}}, headers=MERGE).json()
    assert patched["status"] == {"phase": "Old"} and patched["metadata"]["generation"] == 2
    assert client.get(f"{GADGETS}/g/status").status_code == 404


def test_pods_start_pending_and_take_status_through_the_subresource(client: httpx.Client) -> None:
    pods = "/api/v1/namespaces/default/pods"
    created = client.post(pods, json={"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]},
                                      "status": {"phase": "Running"}}).json()
    assert created["status"] == {"phase": "Pending"}
    patched = client.patch(f"{pods}/p/status", json={"status": {"phase": "Succeeded"}}, headers=MERGE).json()
    assert patched["status"]["phase"] == "Succeeded"


def test_a_status_write_that_changes_nothing_keeps_the_resource_version(client: httpx.Client,
                                                                         crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    first = client.patch(f"{WIDGETS}/w/status", json={"status": {"phase": "Running"}}, headers=MERGE).json()
    again = client.patch(f"{WIDGETS}/w/status", json={"status": {"phase": "Running"}}, headers=MERGE).json()
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
