"""Label and field selectors: parsed and matched as the real server does, on list and watch."""

from __future__ import annotations

import httpx
import pytest

from tests.kube.emulator import selectors, statuses

LABELS = {"app": "trainer", "tier": "gpu", "env": "prod"}


@pytest.mark.parametrize(("selector", "expected"), [
    ("", True),
    ("app=trainer", True),
    ("app==trainer", True),
    ("app=gateway", False),
    ("app!=gateway", True),
    ("app!=trainer", False),
    ("missing!=x", True),
    ("tier in (gpu, cpu)", True),
    ("tier in (cpu)", False),
    ("tier notin (cpu)", True),
    ("tier notin (gpu,cpu)", False),
    ("missing notin (x)", True),
    ("missing in (x)", False),
    ("env", True),
    ("missing", False),
    ("!missing", True),
    ("!env", False),
    ("app=trainer,tier in (gpu),!missing", True),
    ("app=trainer,tier notin (gpu)", False),
    ("loraplane.io/tenant", False),
])
def test_label_selector_matches(selector: str, expected: bool) -> None:
    requirements = selectors.parse_label_selector(selector)
    assert selectors.labels_match(requirements, {"metadata": {"labels": LABELS}}) is expected


@pytest.mark.parametrize("selector", ["app in gpu", "=x", "app=(x)", "a b c", "tier in (a", "app===x"])
def test_malformed_label_selectors_are_400(selector: str) -> None:
    with pytest.raises(statuses.StatusError) as caught:
        selectors.parse_label_selector(selector)
    assert caught.value.code == 400


POD = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "node-1", "hostNetwork": False},
       "status": {"phase": "Running"}}


@pytest.mark.parametrize(("selector", "expected"), [
    ("metadata.name=p", True),
    ("metadata.name==q", False),
    ("metadata.name!=q", True),
    ("metadata.namespace=ns,status.phase=Running", True),
    ("status.phase!=Running", False),
    ("spec.nodeName=node-1", True),
    ("spec.nodeName=", False),
    ("spec.hostNetwork=false", True),
    ("status.podIP=", True),
])
def test_field_selector_matches_pods(selector: str, expected: bool) -> None:
    requirements = selectors.parse_field_selector(selector, "", "pods")
    assert selectors.fields_match(requirements, POD) is expected


def test_unsupported_field_is_400_naming_it() -> None:
    with pytest.raises(statuses.StatusError) as caught:
        selectors.parse_field_selector("spec.nodeName=x", "testing.loraplane.io", "widgets")
    assert caught.value.code == 400 and caught.value.message == "field label not supported: spec.nodeName"


def test_list_filters_by_labels_and_fields(client: httpx.Client) -> None:
    pods = "/api/v1/namespaces/default/pods"
    for name, node, app in (("a", "n1", "x"), ("b", "n2", "x"), ("c", "n1", "y")):
        client.post(pods, json={"metadata": {"name": name, "labels": {"app": app}}, "spec": {"nodeName": node}})

    def names(**params: str) -> list[str]:
        return [item["metadata"]["name"] for item in client.get(pods, params=params).json()["items"]]

    assert names(labelSelector="app=x") == ["a", "b"]
    assert names(fieldSelector="spec.nodeName=n1") == ["a", "c"]
    assert names(labelSelector="app=x", fieldSelector="spec.nodeName=n1") == ["a"]
    assert names(fieldSelector="status.phase=Pending,metadata.name!=b") == ["a", "c"]
    response = client.get(pods, params={"fieldSelector": "spec.image=x"})
    assert response.status_code == 400 and response.json()["message"] == "field label not supported: spec.image"
    assert client.get(pods, params={"labelSelector": "app in x"}).status_code == 400
