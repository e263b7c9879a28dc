"""CRD schemas: pruning, defaulting and validation of custom resources, as pure functions and over HTTP."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from tests.kube.conftest import WIDGETS
from tests.kube.emulator import KubeEmulator, schemas
from tests.kube.emulator.samples import WIDGET_CRD, widget

SCHEMA = WIDGET_CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
MERGE = {"Content-Type": "application/merge-patch+json"}


def _spec(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "testing.loraplane.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}


def test_pruning_drops_unknown_fields_but_keeps_preserved_ones() -> None:
    pruned = schemas.prune({**_spec(size=1, bogus=1, extra={"any": {"thing": 1}}, options={"retries": 1, "x": 2}),
                            "unknownTop": 1, "metadata": {"name": "w", "labels": {"a": "b"}}}, SCHEMA)
    assert pruned == {"apiVersion": "testing.loraplane.io/v1", "kind": "Widget",
                      "metadata": {"name": "w", "labels": {"a": "b"}},
                      "spec": {"size": 1, "extra": {"any": {"thing": 1}}, "options": {"retries": 1}}}


def test_pruning_drops_nulls_unless_nullable() -> None:
    assert schemas.prune(_spec(size=1, label=None, ratio=None), SCHEMA)["spec"] == {"size": 1, "ratio": None}


def test_defaults_fill_absent_fields_at_every_level() -> None:
    defaulted = schemas.apply_defaults(_spec(size=1, options={}), SCHEMA)
    assert defaulted["spec"] == {"size": 1, "color": "red", "options": {"retries": 3}}
    assert schemas.apply_defaults(_spec(size=1, color="blue"), SCHEMA)["spec"]["color"] == "blue"


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({}, "spec.size", "Required value"),
    ({"size": "big"}, "spec.size", 'Invalid value: "big": spec.size in body must be of type integer: "string"'),
    ({"size": 1.5}, "spec.size", 'Invalid value: 1.5: spec.size in body must be of type integer: "number"'),
    ({"size": True}, "spec.size", 'Invalid value: true: spec.size in body must be of type integer: "boolean"'),
    ({"size": 0}, "spec.size", "Invalid value: 0: spec.size in body should be greater than or equal to 1"),
    ({"size": 11}, "spec.size", "Invalid value: 11: spec.size in body should be less than or equal to 10"),
    ({"size": 1, "color": "pink"}, "spec.color",
     'Unsupported value: "pink": supported values: "red", "green", "blue"'),
    ({"size": 1, "label": "a" * 21}, "spec.label", "Too long: may not be more than 20 bytes"),
    ({"size": 1, "label": "Caps"}, "spec.label", "Invalid value: \"Caps\": spec.label in body should match '^[a-z]+$'"),
    ({"size": 1, "tags": ["a", "b", "c", "d"]}, "spec.tags", "Too many: 4: must have at most 3 items"),
    ({"size": 1, "tags": [1]}, "spec.tags[0]", 'Invalid value: 1: spec.tags[0] in body must be of type string: "integer"'),
    ({"size": 1, "limits": {"gpu": "one"}}, "spec.limits.gpu",
     'Invalid value: "one": spec.limits.gpu in body must be of type integer: "string"'),
    ({"size": 1, "port": 1.5}, "spec.port", 'Invalid value: 1.5: spec.port in body must be of type string: "number"'),
])
def test_validation_names_the_field_and_the_rule(spec: dict[str, Any], field: str, message: str) -> None:
    causes = schemas.validate(_spec(**spec), SCHEMA)
    assert [(cause["field"], cause["message"]) for cause in causes] == [(field, message)]


def test_every_violated_keyword_of_a_field_is_reported() -> None:
    causes = schemas.validate(_spec(size=1, label=""), SCHEMA)
    assert [cause["message"] for cause in causes] == [
        'Invalid value: "": spec.label in body should be at least 1 chars long',
        "Invalid value: \"\": spec.label in body should match '^[a-z]+$'",
    ]


@pytest.mark.parametrize("spec", [
    {"size": 1}, {"size": 10, "color": "green", "label": "abc", "port": 80}, {"size": 1, "port": "http"},
    {"size": 1, "ratio": None}, {"size": 1, "ratio": 0.5}, {"size": 1, "limits": {"gpu": 2}}, {"size": 2.0},
])
def test_valid_specs_pass(spec: dict[str, Any]) -> None:
    assert schemas.validate(_spec(**spec), SCHEMA) == []


@pytest.mark.parametrize(("schema", "value", "ok"), [
    ({"type": "integer", "minimum": 1, "exclusiveMinimum": True}, 1, False),
    ({"type": "integer", "maximum": 5, "exclusiveMaximum": True}, 4, True),
    ({"type": "array", "minItems": 1}, [], False),
    ({"type": "object", "maxProperties": 1}, {"a": 1, "b": 2}, False),
    ({"type": "object", "minProperties": 1}, {}, False),
    ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, [], False),
    ({"oneOf": [{"minimum": 1}, {"minimum": 2}]}, 5, False),
    ({"oneOf": [{"minimum": 1}, {"maximum": 0}]}, 5, True),
    ({"allOf": [{"minimum": 1}, {"maximum": 3}]}, 4, False),
    ({"not": {"enum": ["forbidden"]}}, "forbidden", False),
    ({"type": "number"}, 3, True),
])
def test_other_keywords(schema: dict[str, Any], value: Any, ok: bool) -> None:
    assert (schemas.validate(value, schema, "spec.x") == []) is ok


def test_invalid_create_is_422_listing_every_cause(client: httpx.Client, crds: KubeEmulator) -> None:
    response = client.post(WIDGETS, json=widget("w", size=0, color="pink"))
    assert response.status_code == 422
    body = response.json()
    assert body["reason"] == "Invalid" and body["details"]["kind"] == "Widget"
    assert body["message"] == (
        'Widget.testing.loraplane.io "w" is invalid: [spec.size: Invalid value: 0: spec.size in body should be '
        'greater than or equal to 1, spec.color: Unsupported value: "pink": supported values: "red", "green", "blue"]')
    assert [cause["field"] for cause in body["details"]["causes"]] == ["spec.size", "spec.color"]
    assert client.get(f"{WIDGETS}/w").status_code == 404


def test_create_prunes_and_defaults(client: httpx.Client, crds: KubeEmulator) -> None:
    created = client.post(WIDGETS, json=widget("w", bogus=True)).json()
    assert created["spec"] == {"size": 1, "color": "red"}


def test_invalid_patch_is_422_and_changes_nothing(client: httpx.Client, crds: KubeEmulator) -> None:
    version = client.post(WIDGETS, json=widget("w")).json()["metadata"]["resourceVersion"]
    response = client.patch(f"{WIDGETS}/w", json={"spec": {"size": 99}}, headers=MERGE)
    assert response.status_code == 422
    assert client.get(f"{WIDGETS}/w").json()["metadata"]["resourceVersion"] == version


def test_immutable_field_rule_rejects_a_change_with_its_message(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w", serial="s-1"))
    response = client.patch(f"{WIDGETS}/w", json={"spec": {"serial": "s-2"}}, headers=MERGE)
    assert response.status_code == 422
    cause = response.json()["details"]["causes"][0]
    assert cause == {"reason": "FieldValueInvalid", "field": "spec.serial",
                     "message": 'Invalid value: "string": serial is immutable'}
    assert client.patch(f"{WIDGETS}/w", json={"spec": {"size": 2}}, headers=MERGE).status_code == 200


def test_transition_rule_forbids_removing_a_field(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    assert client.patch(f"{WIDGETS}/w", json={"spec": {"owner": "ann"}}, headers=MERGE).status_code == 200
    response = client.patch(f"{WIDGETS}/w", json={"spec": {"owner": None}}, headers=MERGE)
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["message"].endswith("owner cannot be removed")


def test_status_writes_are_pruned_and_validated(client: httpx.Client, kube_emulator: KubeEmulator) -> None:
    crd = copy.deepcopy(WIDGET_CRD)
    for version in crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["status"] = {
            "type": "object", "properties": {"phase": {"type": "string", "enum": ["Pending", "Done"]}}}
    kube_emulator.create(crd)
    client.post(WIDGETS, json=widget("w"))
    bad = client.patch(f"{WIDGETS}/w/status", json={"status": {"phase": "Lost"}}, headers=MERGE)
    assert bad.status_code == 422 and bad.json()["details"]["causes"][0]["field"] == "status.phase"
    good = client.patch(f"{WIDGETS}/w/status", json={"status": {"phase": "Done", "junk": 1}}, headers=MERGE)
    assert good.status_code == 200 and good.json()["status"] == {"phase": "Done"}
