"""Deletion: finalizers hold objects with a deletionTimestamp, owners take dependents, namespaces empty out."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.kube.conftest import WIDGETS
from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.samples import widget

MERGE = {"Content-Type": "application/merge-patch+json"}
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def _gone(client: httpx.Client, path: str, timeout: float = 2.0) -> bool:
    """Garbage collection runs after the response: poll briefly for the object to disappear."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(path).status_code == 404:
            return True
        time.sleep(0.01)
    return False


def test_delete_with_finalizers_marks_and_keeps_the_object(client: httpx.Client, crds: KubeEmulator) -> None:
    body = widget("w")
    body["metadata"]["finalizers"] = ["loraplane.io/cleanup"]
    client.post(WIDGETS, json=body)
    response = client.delete(f"{WIDGETS}/w")
    assert response.status_code == 200
    metadata = response.json()["metadata"]
    assert metadata["deletionTimestamp"] and metadata["deletionGracePeriodSeconds"] == 0
    assert metadata["generation"] == 2
    assert client.get(f"{WIDGETS}/w").json()["metadata"]["deletionTimestamp"] == metadata["deletionTimestamp"]
    again = client.delete(f"{WIDGETS}/w").json()
    assert again["metadata"]["deletionTimestamp"] == metadata["deletionTimestamp"]


def test_removing_the_last_finalizer_deletes_the_object(client: httpx.Client, crds: KubeEmulator) -> None:
    body = widget("w")
    body["metadata"]["finalizers"] = ["a", "b"]
    client.post(WIDGETS, json=body)
    client.delete(f"{WIDGETS}/w")
    assert client.patch(f"{WIDGETS}/w", json={"metadata": {"finalizers": ["b"]}}, headers=MERGE).status_code == 200
    assert client.get(f"{WIDGETS}/w").status_code == 200
    last = client.patch(f"{WIDGETS}/w", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert last.status_code == 200
    assert client.get(f"{WIDGETS}/w").status_code == 404


def test_no_new_finalizers_while_deleting(client: httpx.Client, crds: KubeEmulator) -> None:
    body = widget("w")
    body["metadata"]["finalizers"] = ["a"]
    client.post(WIDGETS, json=body)
    client.delete(f"{WIDGETS}/w")
    response = client.patch(f"{WIDGETS}/w", json={"metadata": {"finalizers": ["a", "b"]}}, headers=MERGE)
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == "metadata.finalizers"


def test_delete_answers_the_object_for_custom_resources_and_a_status_for_configmaps(
    client: httpx.Client, crds: KubeEmulator,
) -> None:
    client.post(WIDGETS, json=widget("w"))
    assert client.delete(f"{WIDGETS}/w").json()["kind"] == "Widget"
    uid = client.post(CONFIGMAPS, json={"metadata": {"name": "c"}}).json()["metadata"]["uid"]
    status = client.delete(f"{CONFIGMAPS}/c").json()
    assert status["kind"] == "Status" and status["status"] == "Success"
    assert status["details"] == {"name": "c", "group": "", "kind": "configmaps", "uid": uid}


def test_delete_preconditions_are_checked(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    response = client.request("DELETE", f"{WIDGETS}/w", json={"preconditions": {"uid": "someone-else"}})
    assert response.status_code == 409
    response = client.request("DELETE", f"{WIDGETS}/w", json={"preconditions": {"resourceVersion": "1"}})
    assert response.status_code == 409
    assert client.get(f"{WIDGETS}/w").status_code == 200


def _owned(name: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "ownerReferences": [{
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]}}


def test_deleting_an_owner_deletes_its_dependents(client: httpx.Client, crds: KubeEmulator) -> None:
    owner = client.post(WIDGETS, json=widget("owner")).json()
    client.post(CONFIGMAPS, json=_owned("dependent", owner))
    client.post("/api/v1/namespaces/default/secrets", json=_owned("secret", owner))
    client.post(CONFIGMAPS, json={"metadata": {"name": "bystander"}})
    client.delete(f"{WIDGETS}/owner")
    assert _gone(client, f"{CONFIGMAPS}/dependent")
    assert _gone(client, "/api/v1/namespaces/default/secrets/secret")
    assert client.get(f"{CONFIGMAPS}/bystander").status_code == 200


def test_orphan_propagation_keeps_dependents_without_the_reference(client: httpx.Client, crds: KubeEmulator) -> None:
    owner = client.post(WIDGETS, json=widget("owner")).json()
    client.post(CONFIGMAPS, json=_owned("dependent", owner))
    marked = client.delete(f"{WIDGETS}/owner", params={"propagationPolicy": "Orphan"}).json()
    assert marked["metadata"]["finalizers"] == ["orphan"] and marked["metadata"]["deletionTimestamp"]
    assert _gone(client, f"{WIDGETS}/owner")
    dependent = client.get(f"{CONFIGMAPS}/dependent").json()
    assert "ownerReferences" not in dependent["metadata"]
    client.delete(f"{WIDGETS}/missing")  # another removal pass of the collector leaves it alone
    assert client.get(f"{CONFIGMAPS}/dependent").status_code == 200


def test_foreground_deletion_waits_for_dependents(client: httpx.Client, crds: KubeEmulator) -> None:
    owner = client.post(WIDGETS, json=widget("owner")).json()
    held = _owned("held", owner)
    held["metadata"]["finalizers"] = ["hold"]
    client.post(CONFIGMAPS, json=held)
    client.post(CONFIGMAPS, json=_owned("free", owner))
    response = client.request("DELETE", f"{WIDGETS}/owner", json={"propagationPolicy": "Foreground"})
    assert response.json()["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert _gone(client, f"{CONFIGMAPS}/free")
    assert client.get(f"{WIDGETS}/owner").json()["metadata"]["finalizers"] == ["foregroundDeletion"]
    client.patch(f"{CONFIGMAPS}/held", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert _gone(client, f"{WIDGETS}/owner")


def test_unknown_propagation_policy_is_400(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    response = client.delete(f"{WIDGETS}/w", params={"propagationPolicy": "Sideways"})
    assert response.status_code == 400 and "propagationPolicy" in response.json()["message"]


def test_dependents_with_finalizers_wait_for_them(client: httpx.Client, crds: KubeEmulator) -> None:
    owner = client.post(WIDGETS, json=widget("owner")).json()
    dependent = _owned("dependent", owner)
    dependent["metadata"]["finalizers"] = ["hold"]
    client.post(CONFIGMAPS, json=dependent)
    client.delete(f"{WIDGETS}/owner")
    deadline = time.monotonic() + 2
    while not client.get(f"{CONFIGMAPS}/dependent").json()["metadata"].get("deletionTimestamp"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    client.patch(f"{CONFIGMAPS}/dependent", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert client.get(f"{CONFIGMAPS}/dependent").status_code == 404


def test_deleting_a_namespace_deletes_its_content(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post("/api/v1/namespaces", json={"metadata": {"name": "team"}})
    client.post("/api/v1/namespaces/team/configmaps", json={"metadata": {"name": "c"}})
    terminating = client.delete("/api/v1/namespaces/team").json()
    assert terminating["status"]["phase"] == "Terminating"
    assert _gone(client, "/api/v1/namespaces/team")
    assert client.get("/api/v1/namespaces/team/configmaps/c").status_code == 404


def test_delete_collection_honours_the_label_selector(client: httpx.Client) -> None:
    client.post(CONFIGMAPS, json={"metadata": {"name": "a", "labels": {"app": "x"}}})
    client.post(CONFIGMAPS, json={"metadata": {"name": "b", "labels": {"app": "y"}}})
    deleted = client.delete(CONFIGMAPS, params={"labelSelector": "app=x"}).json()
    assert [item["metadata"]["name"] for item in deleted["items"]] == ["a"]
    assert [item["metadata"]["name"] for item in client.get(CONFIGMAPS).json()["items"]] == ["b"]


def test_a_namespace_waits_for_finalized_content(client: httpx.Client) -> None:
    client.post("/api/v1/namespaces", json={"metadata": {"name": "team"}})
    client.post("/api/v1/namespaces/team/configmaps", json={"metadata": {"name": "held", "finalizers": ["x"]}})
    client.delete("/api/v1/namespaces/team")
    refused = client.post("/api/v1/namespaces/team/configmaps", json={"metadata": {"name": "new"}})
    assert refused.status_code == 403 and refused.json()["reason"] == "Forbidden"
    deadline = time.monotonic() + 2
    while not client.get("/api/v1/namespaces/team/configmaps/held").json()["metadata"].get("deletionTimestamp"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.get("/api/v1/namespaces/team").json()["status"]["phase"] == "Terminating"
    client.patch("/api/v1/namespaces/team/configmaps/held", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert _gone(client, "/api/v1/namespaces/team")
