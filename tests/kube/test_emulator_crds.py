"""CustomResourceDefinitions: created over HTTP or preloaded from YAML, served at once, checked like the real ones."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.samples import GADGET_CRD, WIDGET_CRD, widget

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PROJECT_CRD = Path(__file__).resolve().parents[2] / "crds" / "lorajob.yaml"


def test_created_crd_is_established_and_its_resources_are_served(client: httpx.Client) -> None:
    response = client.post(CRDS, json=WIDGET_CRD)
    assert response.status_code == 201
    conditions = {c["type"]: c["status"] for c in response.json()["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert response.json()["status"]["acceptedNames"]["kind"] == "Widget"

    created = client.post("/apis/testing.loraplane.io/v1/namespaces/default/widgets", json=widget("w"))
    assert created.status_code == 201
    assert client.get("/apis/testing.loraplane.io/v1beta1/namespaces/default/widgets/w").json()["apiVersion"] \
        == "testing.loraplane.io/v1beta1"


def test_crds_preload_from_a_yaml_file(kube_emulator: KubeEmulator, client: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "crds.yaml"
    path.write_text(yaml.safe_dump_all([WIDGET_CRD, GADGET_CRD]), encoding="utf-8")
    loaded = kube_emulator.load_manifests(path)
    assert [obj["metadata"]["name"] for obj in loaded] == ["widgets.testing.loraplane.io",
                                                           "gadgets.testing.loraplane.io"]
    assert client.get("/apis/testing.loraplane.io/v1/gadgets").json()["items"] == []


def test_the_project_lorajob_crd_preloads_and_is_served(kube_emulator: KubeEmulator, client: httpx.Client) -> None:
    (crd,) = [obj for obj in kube_emulator.load_manifests(PROJECT_CRD) if obj["kind"] == "CustomResourceDefinition"]
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    version = next(v["name"] for v in crd["spec"]["versions"] if v["served"])
    assert client.get(f"/apis/{group}/{version}/namespaces/default/{plural}").status_code == 200


def test_the_project_examples_validate_and_their_immutable_fields_hold(kube_emulator: KubeEmulator,
                                                                       client: httpx.Client) -> None:
    kube_emulator.load_manifests(PROJECT_CRD)
    examples = PROJECT_CRD.parent.parent / "examples"
    for path in sorted(examples.glob("lorajob-*.yaml")):
        for manifest in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if manifest:
                manifest["metadata"]["namespace"] = "default"
                created = kube_emulator.create(manifest)
                assert created["metadata"]["generation"] == 1, path
    api_version, name = created["apiVersion"], created["metadata"]["name"]
    group_version = api_version if "/" in api_version else f"/{api_version}"
    plural = next(c for c in kube_emulator.list("apiextensions.k8s.io/v1", "CustomResourceDefinition")
                  if c["spec"]["names"]["kind"] == created["kind"])["spec"]["names"]["plural"]
    response = client.patch(f"/apis/{group_version}/namespaces/default/{plural}/{name}",
                            json={"spec": {"baseModel": "another/model"}},
                            headers={"Content-Type": "application/merge-patch+json"})
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == "spec.baseModel"


def _broken(change: Any) -> dict[str, Any]:
    crd = copy.deepcopy(WIDGET_CRD)
    change(crd)
    return crd


@pytest.mark.parametrize(("crd", "field"), [
    (_broken(lambda c: c["metadata"].update(name="widgets.wrong.io")), "metadata.name"),
    (_broken(lambda c: c["spec"].update(scope="Everywhere")), "spec.scope"),
    (_broken(lambda c: c["spec"]["names"].pop("kind")), "spec.names.kind"),
    (_broken(lambda c: c["spec"]["versions"][1].update(storage=True)), "spec.versions"),
    (_broken(lambda c: c["spec"].update(versions=[])), "spec.versions"),
])
def test_malformed_crd_is_422_naming_the_field(client: httpx.Client, crd: dict[str, Any], field: str) -> None:
    response = client.post(CRDS, json=crd)
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == field
    assert client.get("/apis/testing.loraplane.io/v1").status_code == 404


def test_deleting_a_crd_deletes_its_objects(client: httpx.Client, crds: KubeEmulator) -> None:
    crds.create(widget("doomed"))
    assert client.delete(f"{CRDS}/widgets.testing.loraplane.io").status_code == 200
    assert client.post(CRDS, json=WIDGET_CRD).status_code == 201
    assert client.get("/apis/testing.loraplane.io/v1/namespaces/default/widgets").json()["items"] == []


def test_unserved_versions_are_not_routed(client: httpx.Client) -> None:
    crd = copy.deepcopy(WIDGET_CRD)
    crd["spec"]["versions"][1]["served"] = False
    assert client.post(CRDS, json=crd).status_code == 201
    assert client.get("/apis/testing.loraplane.io/v1beta1/namespaces/default/widgets").status_code == 404
