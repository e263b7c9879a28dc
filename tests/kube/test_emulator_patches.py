"""Merge patch (RFC 7386) and JSON patch (RFC 6902) as pure functions and over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.kube.conftest import WIDGETS
from tests.kube.emulator import KubeEmulator, patches, statuses
from tests.kube.emulator.samples import widget

MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.mark.parametrize(("target", "patch", "expected"), [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_follows_rfc_7386(target: Any, patch: Any, expected: Any) -> None:
    assert patches.merge_patch(target, patch) == expected


@pytest.mark.parametrize(("doc", "ops", "expected"), [
    ({"a": 1}, [{"op": "add", "path": "/b", "value": 2}], {"a": 1, "b": 2}),
    ({"a": [1, 2]}, [{"op": "add", "path": "/a/1", "value": 9}], {"a": [1, 9, 2]}),
    ({"a": [1, 2]}, [{"op": "add", "path": "/a/-", "value": 3}], {"a": [1, 2, 3]}),
    ({"a": 1, "b": 2}, [{"op": "remove", "path": "/a"}], {"b": 2}),
    ({"a": [1, 2, 3]}, [{"op": "remove", "path": "/a/0"}], {"a": [2, 3]}),
    ({"a": 1}, [{"op": "replace", "path": "/a", "value": 5}], {"a": 5}),
    ({"a": {"b": 1}}, [{"op": "move", "from": "/a/b", "path": "/c"}], {"a": {}, "c": 1}),
    ({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}], {"a": {"b": 1}, "c": {"b": 1}}),
    ({"a/b": 1, "m~n": 2}, [{"op": "replace", "path": "/a~1b", "value": 3},
                            {"op": "remove", "path": "/m~0n"}], {"a/b": 3}),
    ({"a": "x"}, [{"op": "test", "path": "/a", "value": "x"}], {"a": "x"}),
])
def test_json_patch_follows_rfc_6902(doc: Any, ops: Any, expected: Any) -> None:
    assert patches.json_patch(doc, ops) == expected


@pytest.mark.parametrize(("ops", "code"), [
    ([{"op": "test", "path": "/a", "value": "other"}], 422),
    ([{"op": "replace", "path": "/missing", "value": 1}], 422),
    ([{"op": "remove", "path": "/missing"}], 422),
    ([{"op": "add", "path": "/x/y", "value": 1}], 422),
    ([{"op": "frobnicate", "path": "/a"}], 400),
    ([{"op": "add", "path": "/a"}], 400),
    ({"op": "add", "path": "/a", "value": 1}, 400),
])
def test_json_patch_failures_are_422_or_400(ops: Any, code: int) -> None:
    with pytest.raises(statuses.StatusError) as caught:
        patches.json_patch({"a": "x"}, ops)
    assert caught.value.code == code


def test_json_patch_does_not_change_its_input() -> None:
    doc = {"a": [1]}
    patches.json_patch(doc, [{"op": "add", "path": "/a/-", "value": 2}])
    assert doc == {"a": [1]}


def test_merge_patch_over_http_changes_the_spec(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w", label="old"))
    response = client.patch(f"{WIDGETS}/w", json={"spec": {"size": 5, "label": None}}, headers=MERGE)
    assert response.status_code == 200
    assert response.json()["spec"] == {"size": 5, "color": "red"}
    assert response.json()["metadata"]["generation"] == 2


def test_failed_test_operation_is_422_as_kopf_expects(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
           {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    response = client.patch(f"{WIDGETS}/w", json=ops, headers=JSON_PATCH)
    assert response.status_code == 422
    body = response.json()
    assert body["reason"] == "Invalid"
    assert body["message"] == "the server rejected our request due to an error in our request"
    assert body["details"]["causes"][0]["message"] == "testing value /metadata/resourceVersion failed: test failed"
    assert "finalizers" not in client.get(f"{WIDGETS}/w").json()["metadata"]


def test_json_patch_with_a_passing_test_applies(client: httpx.Client, crds: KubeEmulator) -> None:
    version = client.post(WIDGETS, json=widget("w")).json()["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": version},
           {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    response = client.patch(f"{WIDGETS}/w", json=ops, headers=JSON_PATCH)
    assert response.status_code == 200 and response.json()["metadata"]["finalizers"] == ["x"]


def test_merge_patch_with_a_stale_resource_version_is_409(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    response = client.patch(f"{WIDGETS}/w", json={"metadata": {"resourceVersion": "1"}, "spec": {"size": 2}},
                            headers=MERGE)
    assert response.status_code == 409 and response.json()["reason"] == "Conflict"


def test_strategic_merge_patch_is_treated_as_merge_patch(client: httpx.Client) -> None:
    client.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "c"}, "data": {"a": "1"}})
    response = client.patch("/api/v1/namespaces/default/configmaps/c", json={"data": {"b": "2"}},
                            headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert response.json()["data"] == {"a": "1", "b": "2"}


def test_unknown_patch_type_is_415(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    response = client.patch(f"{WIDGETS}/w", content=b"spec: {}", headers={"Content-Type": "application/apply-patch+yaml"})
    assert response.status_code == 415 and response.json()["kind"] == "Status"


def test_patch_of_a_missing_object_is_404(client: httpx.Client, crds: KubeEmulator) -> None:
    assert client.patch(f"{WIDGETS}/nope", json={"spec": {}}, headers=MERGE).status_code == 404
