"""CRUD at the real paths: server-set metadata, status codes, Status bodies and optimistic concurrency."""

from __future__ import annotations

import datetime

import httpx
import pytest

from tests.kube.conftest import WIDGETS
from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.samples import widget

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
GADGETS = "/apis/testing.loraplane.io/v1/gadgets"


def test_create_sets_server_metadata_and_answers_201(client: httpx.Client, crds: KubeEmulator) -> None:
    response = client.post(WIDGETS, json=widget("first"))
    assert response.status_code == 201
    metadata = response.json()["metadata"]
    assert len(metadata["uid"]) == 36
    assert metadata["generation"] == 1
    assert metadata["namespace"] == "default"
    assert int(metadata["resourceVersion"]) > 0
    datetime.datetime.strptime(metadata["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")


def test_resource_versions_come_from_one_increasing_counter(client: httpx.Client, crds: KubeEmulator) -> None:
    versions = [
        client.post(WIDGETS, json=widget("a")).json()["metadata"]["resourceVersion"],
        client.post(CONFIGMAPS, json={"metadata": {"name": "b"}}).json()["metadata"]["resourceVersion"],
        client.post(GADGETS, json={"apiVersion": "testing.loraplane.io/v1", "kind": "Gadget",
                                   "metadata": {"name": "c"}}).json()["metadata"]["resourceVersion"],
    ]
    assert all(isinstance(version, str) for version in versions)
    assert [int(v) for v in versions] == sorted(int(v) for v in versions)
    assert len(set(versions)) == 3
    assert client.get(CONFIGMAPS).json()["metadata"]["resourceVersion"] == versions[-1]


def test_generate_name_gets_a_five_character_suffix(client: httpx.Client, crds: KubeEmulator) -> None:
    body = widget("")
    body["metadata"] = {"generateName": "job-"}
    names = {client.post(WIDGETS, json=body).json()["metadata"]["name"] for _ in range(3)}
    assert len(names) == 3
    assert all(name.startswith("job-") and len(name) == 9 for name in names)


def test_get_update_and_delete_answer_200(client: httpx.Client, crds: KubeEmulator) -> None:
    created = client.post(WIDGETS, json=widget("w")).json()
    fetched = client.get(f"{WIDGETS}/w")
    assert fetched.status_code == 200 and fetched.json() == created
    created["spec"]["size"] = 2
    updated = client.put(f"{WIDGETS}/w", json=created)
    assert updated.status_code == 200
    assert updated.json()["metadata"]["generation"] == 2
    assert int(updated.json()["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert client.delete(f"{WIDGETS}/w").status_code == 200
    assert client.get(f"{WIDGETS}/w").status_code == 404


def test_duplicate_create_is_409_already_exists(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    response = client.post(WIDGETS, json=widget("w"))
    assert response.status_code == 409
    assert response.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'widgets.testing.loraplane.io "w" already exists', "reason": "AlreadyExists", "code": 409,
        "details": {"name": "w", "group": "testing.loraplane.io", "kind": "widgets"},
    }


def test_update_with_a_stale_resource_version_is_409_conflict(client: httpx.Client, crds: KubeEmulator) -> None:
    stale = client.post(WIDGETS, json=widget("w")).json()
    fresh = dict(stale, spec={"size": 2})
    assert client.put(f"{WIDGETS}/w", json=fresh).status_code == 200
    response = client.put(f"{WIDGETS}/w", json=dict(stale, spec={"size": 3}))
    assert response.status_code == 409
    assert response.json()["reason"] == "Conflict"
    assert "the object has been modified" in response.json()["message"]


def test_custom_resource_update_requires_a_resource_version(client: httpx.Client, crds: KubeEmulator) -> None:
    created = client.post(WIDGETS, json=widget("w")).json()
    del created["metadata"]["resourceVersion"]
    response = client.put(f"{WIDGETS}/w", json=created)
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == "metadata.resourceVersion"


def test_builtin_update_without_resource_version_is_unconditional(client: httpx.Client) -> None:
    client.post(CONFIGMAPS, json={"metadata": {"name": "c"}, "data": {"k": "1"}})
    response = client.put(f"{CONFIGMAPS}/c", json={"metadata": {"name": "c"}, "data": {"k": "2"}})
    assert response.status_code == 200 and response.json()["data"] == {"k": "2"}


def test_missing_object_is_404_not_found(client: httpx.Client, crds: KubeEmulator) -> None:
    for response in (client.get(f"{WIDGETS}/nope"), client.put(f"{WIDGETS}/nope", json=widget("nope")),
                     client.delete(f"{WIDGETS}/nope"), client.get(f"{CONFIGMAPS}/nope")):
        assert response.status_code == 404
        body = response.json()
        assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["code"] == 404
    assert client.get(f"{CONFIGMAPS}/nope").json()["message"] == 'configmaps "nope" not found'


def test_system_metadata_cannot_be_overwritten(client: httpx.Client, crds: KubeEmulator) -> None:
    created = client.post(WIDGETS, json=widget("w")).json()
    forged = dict(created, metadata={**created["metadata"], "uid": "forged", "generation": 99,
                                     "creationTimestamp": "2000-01-01T00:00:00Z", "labels": {"a": "b"}})
    updated = client.put(f"{WIDGETS}/w", json=forged).json()
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["generation"] == 1  # a labels-only change
    assert updated["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert updated["metadata"]["labels"] == {"a": "b"}


def test_an_update_that_changes_nothing_keeps_the_resource_version(client: httpx.Client, crds: KubeEmulator) -> None:
    created = client.post(WIDGETS, json=widget("w")).json()
    again = client.put(f"{WIDGETS}/w", json=created).json()
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_cluster_scoped_resources_live_outside_namespaces(client: httpx.Client, crds: KubeEmulator) -> None:
    body = {"apiVersion": "testing.loraplane.io/v1", "kind": "Gadget", "metadata": {"name": "g"}, "data": 1}
    created = client.post(GADGETS, json=body).json()
    assert "namespace" not in created["metadata"]
    assert client.get(f"{GADGETS}/g").json()["data"] == 1
    assert client.get("/apis/testing.loraplane.io/v1/namespaces/default/gadgets").status_code == 404


def test_cluster_wide_list_spans_namespaces(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post("/api/v1/namespaces", json={"metadata": {"name": "other"}})
    client.post(WIDGETS, json=widget("a"))
    client.post("/apis/testing.loraplane.io/v1/namespaces/other/widgets", json=widget("b", namespace="other"))
    listed = client.get("/apis/testing.loraplane.io/v1/widgets").json()
    assert listed["kind"] == "WidgetList"
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed["items"]] == [
        ("default", "a"), ("other", "b")]
    assert [i["metadata"]["name"] for i in client.get(WIDGETS).json()["items"]] == ["a"]


def test_list_pages_with_limit_and_continue(client: httpx.Client) -> None:
    for name in "abcde":
        client.post(CONFIGMAPS, json={"metadata": {"name": name}})
    first = client.get(CONFIGMAPS, params={"limit": "2"}).json()
    assert [i["metadata"]["name"] for i in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 3
    second = client.get(CONFIGMAPS, params={"limit": "2", "continue": first["metadata"]["continue"]}).json()
    assert [i["metadata"]["name"] for i in second["items"]] == ["c", "d"]
    last = client.get(CONFIGMAPS, params={"limit": "2", "continue": second["metadata"]["continue"]}).json()
    assert [i["metadata"]["name"] for i in last["items"]] == ["e"] and "continue" not in last["metadata"]


@pytest.mark.parametrize(("path", "body", "code", "reason"), [
    (CONFIGMAPS, {"metadata": {}}, 422, "Invalid"),
    (CONFIGMAPS, {"metadata": {"name": "Not_A_Name"}}, 422, "Invalid"),
    (CONFIGMAPS, {"kind": "Secret", "metadata": {"name": "x"}}, 400, "BadRequest"),
    (CONFIGMAPS, {"metadata": {"name": "x", "namespace": "elsewhere"}}, 400, "BadRequest"),
    (CONFIGMAPS, ["not", "an", "object"], 400, "BadRequest"),
    ("/api/v1/namespaces/absent/configmaps", {"metadata": {"name": "x"}}, 404, "NotFound"),
])
def test_bad_creates_get_a_status_naming_the_problem(client: httpx.Client, path: str, body: object, code: int,
                                                     reason: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == code
    assert response.json()["reason"] == reason and response.json()["status"] == "Failure"


def test_undecodable_json_is_400(client: httpx.Client) -> None:
    response = client.post(CONFIGMAPS, content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["reason"] == "BadRequest"


def test_url_and_body_names_must_agree(client: httpx.Client) -> None:
    client.post(CONFIGMAPS, json={"metadata": {"name": "c"}})
    response = client.put(f"{CONFIGMAPS}/c", json={"metadata": {"name": "d"}})
    assert response.status_code == 400
    assert "does not match the name on the URL" in response.json()["message"]


def test_requests_without_the_token_are_401(kube_emulator: KubeEmulator) -> None:
    response = httpx.get(f"{kube_emulator.url}/api/v1/namespaces")
    assert response.status_code == 401 and response.json()["reason"] == "Unauthorized"


@pytest.mark.parametrize(("metadata", "field"), [
    ({"name": "x", "labels": {"a": 1}}, "labels"),
    ({"name": "x", "labels": ["a"]}, "labels"),
    ({"name": "x", "annotations": "a=b"}, "annotations"),
    ({"name": "x", "finalizers": "f"}, "finalizers"),
    ({"name": "x", "ownerReferences": [{"name": "o"}]}, "ownerReferences"),
    ({"name": 7}, "name"),
    ({"generateName": ["x"]}, "generateName"),
])
def test_metadata_of_the_wrong_type_is_400_naming_the_field(client: httpx.Client, metadata: dict,
                                                             field: str) -> None:
    response = client.post(CONFIGMAPS, json={"metadata": metadata})
    assert response.status_code == 400
    assert f"metadata.{field} " in response.json()["message"]


@pytest.mark.parametrize("params", [{"limit": "ten"}, {"limit": "-1"}, {"watch": "true", "timeoutSeconds": "soon"}])
def test_malformed_integer_parameters_are_400_naming_them(client: httpx.Client, params: dict[str, str]) -> None:
    response = client.get(CONFIGMAPS, params=params)
    assert response.status_code == 400
    assert next(name for name in params if name != "watch") in response.json()["message"]


def test_delete_body_must_be_delete_options(client: httpx.Client) -> None:
    client.post(CONFIGMAPS, json={"metadata": {"name": "c"}})
    response = client.request("DELETE", f"{CONFIGMAPS}/c", json=["not", "options"])
    assert response.status_code == 400 and response.json()["reason"] == "BadRequest"
    assert client.get(f"{CONFIGMAPS}/c").status_code == 200


@pytest.mark.parametrize("spec", [["not", "a", "spec"], {"group": "g.io", "names": "widgets"},
                                  {"group": "g.io", "scope": "Cluster", "names": {"plural": "ws", "kind": "W"},
                                   "versions": ["v1"]}])
def test_crds_of_the_wrong_shape_are_422(client: httpx.Client, spec: object) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "ws.g.io"}, "spec": spec}
    response = client.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    assert response.status_code == 422 and response.json()["reason"] == "Invalid"


def test_dry_runs_are_refused_rather_than_stored(client: httpx.Client) -> None:
    response = client.post(CONFIGMAPS, params={"dryRun": "All"}, json={"metadata": {"name": "c"}})
    assert response.status_code == 400 and "dryRun" in response.json()["message"]
    assert client.get(f"{CONFIGMAPS}/c").status_code == 404


def test_invalid_label_values_are_422_on_create_and_update(client: httpx.Client) -> None:
    response = client.post(CONFIGMAPS, json={"metadata": {"name": "c", "labels": {"tenant": "Alice Smith"}}})
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == "metadata.labels"
    client.post(CONFIGMAPS, json={"metadata": {"name": "c"}})
    response = client.patch(f"{CONFIGMAPS}/c", json={"metadata": {"labels": {"k": "x" * 64}}},
                            headers={"Content-Type": "application/merge-patch+json"})
    assert response.status_code == 422
