"""The generated CRD as an API server enforces it: samples apply, immutable fields stay put."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplane.core.models.v1alpha1.lorajob import API_VERSION, PLURAL
from tests.operator.harness import ROOT, Cluster

JOBS = f"/apis/{API_VERSION}/namespaces/default/{PLURAL}"



@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("lorajob-*.yaml")), ids=lambda p: p.name)
def test_examples_apply(cluster: Cluster, example: Path) -> None:
    body = yaml.safe_load(example.read_text())
    response = cluster.http.post(JOBS, json=body)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"baseModel": "other"}, "baseModel is immutable"),
        ({"lora": {"rank": 64}}, "lora is immutable"),
        ({"tenant": "mallory"}, "tenant is immutable"),
    ],
)
def test_immutable_fields_are_refused_on_update(cluster: Cluster, spec: dict[str, Any], message: str) -> None:
    body = yaml.safe_load((ROOT / "examples" / "lorajob-interactive.yaml").read_text())
    assert cluster.http.post(JOBS, json=body).status_code == 201
    response = cluster.http.patch(
        f"{JOBS}/{body['metadata']['name']}", json={"spec": spec},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 422, response.text
    assert message in response.text


def test_mutable_fields_change(cluster: Cluster) -> None:
    body = yaml.safe_load((ROOT / "examples" / "lorajob-interactive.yaml").read_text())
    assert cluster.http.post(JOBS, json=body).status_code == 201
    cluster.patch_spec(body["metadata"]["name"], {"suspend": True, "idleTimeoutSeconds": 10})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mode": "training"}, "mode training needs training"),
        ({"mode": "training", "training": {"dataset": "d", "steps": 1, "epochs": 1}}, "set steps or epochs, not both"),
        ({"lora": {"rank": 1000}}, "rank"),
    ],
)
def test_invalid_specs_are_refused_on_create(cluster: Cluster, spec: dict[str, Any], message: str) -> None:
    body = {"apiVersion": API_VERSION, "kind": "LoRAJob", "metadata": {"name": "x"},
            "spec": {"baseModel": "m", "tenant": "t", **spec}}
    response = cluster.http.post(JOBS, json=body)
    assert response.status_code == 422, response.text
    assert message in response.text
