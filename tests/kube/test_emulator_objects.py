"""The pure body decisions: create metadata, update merging, generation, concurrency and deletion marks."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube.emulator import objects, statuses
from tests.kube.emulator.resources import BUILTINS, ResourceType

WIDGET = ResourceType("testing.loraplane.io", "v1", "widgets", "widget", "Widget", True, status_subresource=True,
                      has_generation=True, allows_unconditional_update=False)
GADGET = ResourceType("testing.loraplane.io", "v1", "gadgets", "gadget", "Gadget", False, has_generation=True)
CONFIGMAP = next(rt for rt in BUILTINS if rt.plural == "configmaps")


def _stored(rt: ResourceType, **content: Any) -> dict[str, Any]:
    obj = objects.prepare_create(rt, {"metadata": {"name": "x"}, **content}, namespace="default", uid="u-1",
                                 now="2026-01-01T00:00:00Z", suffix="abcde")
    obj["metadata"]["resourceVersion"] = "5"
    return obj


def test_create_fills_server_metadata() -> None:
    obj = _stored(WIDGET, spec={"a": 1}, status={"b": 2})
    assert obj["metadata"] == {"name": "x", "namespace": "default", "uid": "u-1",
                               "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1, "resourceVersion": "5"}
    assert obj["apiVersion"] == "testing.loraplane.io/v1" and obj["kind"] == "Widget"
    assert "status" not in obj


def test_create_of_cluster_scoped_drops_the_namespace_and_builtins_have_no_generation() -> None:
    assert "namespace" not in _stored(GADGET)["metadata"]
    assert "generation" not in _stored(CONFIGMAP)["metadata"]


def test_generate_name_takes_the_suffix() -> None:
    obj = objects.prepare_create(CONFIGMAP, {"metadata": {"generateName": "job-"}}, namespace="ns", uid="u",
                                 now="t", suffix="k2x4z")
    assert obj["metadata"]["name"] == "job-k2x4z"


@pytest.mark.parametrize(("rt", "change", "subresource", "generation", "status"), [
    (WIDGET, {"spec": {"a": 2}}, None, 2, None),
    (WIDGET, {"spec": {"a": 1}, "metadata": {"name": "x", "labels": {"l": "v"}}}, None, 1, None),
    (WIDGET, {"spec": {"a": 1}, "status": {"s": 1}}, None, 1, None),
    (WIDGET, {"spec": {"a": 9}, "status": {"s": 1}}, "status", 1, {"s": 1}),
    (WIDGET, {"spec": {"a": 1}, "other": True}, None, 2, None),
    (GADGET, {"spec": {"a": 1}, "status": {"s": 1}}, None, 2, {"s": 1}),
    (GADGET, {"spec": {"a": 1}, "metadata": {"name": "x", "annotations": {"k": "v"}}}, None, 1, None),
])
def test_update_bumps_generation_only_for_content(rt: ResourceType, change: dict[str, Any], subresource: str | None,
                                                  generation: int, status: Any) -> None:
    old = _stored(rt, spec={"a": 1})
    new = {"metadata": {"name": "x"}, **change}
    result = objects.prepare_update(rt, old, new, subresource=subresource)
    assert result["metadata"]["generation"] == generation
    assert result.get("status") == status
    assert result["metadata"]["uid"] == "u-1" and "resourceVersion" not in result["metadata"]


@pytest.mark.parametrize(("rt", "requested", "required", "error"), [
    (WIDGET, "5", True, None),
    (WIDGET, "4", False, "Conflict"),
    (WIDGET, None, True, "Invalid"),
    (WIDGET, None, False, None),
    (CONFIGMAP, None, True, None),
    (CONFIGMAP, "6", True, "Conflict"),
])
def test_resource_version_checks(rt: ResourceType, requested: str | None, required: bool, error: str | None) -> None:
    current = _stored(rt)
    if error is None:
        objects.check_resource_version(rt, current, requested, required=required)
    else:
        with pytest.raises(statuses.StatusError) as caught:
            objects.check_resource_version(rt, current, requested, required=required)
        assert caught.value.reason == error


def test_deletion_mark_is_set_once_and_counts_as_a_change() -> None:
    marked = objects.mark_deleting(_stored(WIDGET), "2026-01-02T00:00:00Z")
    assert marked["metadata"]["deletionTimestamp"] == "2026-01-02T00:00:00Z"
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 0 and marked["metadata"]["generation"] == 2
    again = objects.mark_deleting(marked, "2026-01-03T00:00:00Z")
    assert again["metadata"]["deletionTimestamp"] == "2026-01-02T00:00:00Z" and again["metadata"]["generation"] == 2


@pytest.mark.parametrize(("metadata", "released"), [
    ({"deletionTimestamp": "t", "finalizers": []}, True),
    ({"deletionTimestamp": "t"}, True),
    ({"deletionTimestamp": "t", "finalizers": ["f"]}, False),
    ({"finalizers": []}, False),
])
def test_release_needs_a_deletion_mark_and_no_finalizers(metadata: dict[str, Any], released: bool) -> None:
    assert objects.is_released({"metadata": metadata}) is released


def test_owner_uids_are_read_from_owner_references() -> None:
    obj = {"metadata": {"ownerReferences": [{"uid": "a"}, {"uid": "b"}, {"name": "no-uid"}]}}
    assert objects.owner_uids(obj) == {"a", "b"}


@pytest.mark.parametrize(("labels", "ok"), [
    ({"app": "trainer"}, True),
    ({"loraplane.dev/tenant": "alice"}, True),
    ({"a": ""}, True),
    ({"a": "has space"}, False),
    ({"a": "-leading"}, False),
    ({"a": "x" * 64}, False),
    ({"Bad_Prefix/a": "v"}, False),
    ({"ok.io/" + "n" * 64: "v"}, False),
    ({"": "v"}, False),
])
def test_label_keys_and_values_follow_the_real_rules(labels: dict[str, str], ok: bool) -> None:
    assert (objects.label_causes(labels) == []) is ok
