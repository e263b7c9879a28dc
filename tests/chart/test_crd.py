"""The chart's CRD is crds/lorajob.yaml, unchanged; the LoRAJob samples in examples/ fit its schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.rendering import CHART_DIR, REPO, by_kind, render

SOURCE_CRD = REPO / "crds" / "lorajob.yaml"
CHART_CRD = CHART_DIR / "files" / "crds" / "lorajob.yaml"
SAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's OpenAPI v3.0 schema as JSON Schema 2020-12, refusing unknown fields.

    Two translations: OpenAPI 3.0's boolean exclusiveMinimum/exclusiveMaximum become the numeric
    form, and `nullable` admits null. Kubernetes prunes unknown fields of structural schemas
    silently; a sample with a misspelt field would pass plain validation, so every object schema
    that lists its properties (and does not preserve unknown fields) gets additionalProperties:
    false, as `kubectl apply --validate=strict` refuses them.
    """
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
                if isinstance(node.get(bound), bool):
                    if node.pop(bound) and limit in node:
                        node[bound] = node.pop(limit)
            if node.pop("nullable", False) and "type" in node:
                node["type"] = [node["type"], "null"]
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def _validator() -> jsonschema.Validator:
    crd = yaml.safe_load(SOURCE_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def test_chart_crd_file_is_identical_to_the_generated_crd() -> None:
    assert SOURCE_CRD.is_file(), f"{SOURCE_CRD} is missing (scripts/gen_crd.py writes it)"
    assert CHART_CRD.is_file(), f"{CHART_CRD} is missing (scripts/sync-crd.sh writes it)"
    assert CHART_CRD.read_bytes() == SOURCE_CRD.read_bytes(), "run scripts/sync-crd.sh"


def test_rendered_crd_is_the_source_plus_release_labels_and_keep_policy() -> None:
    (rendered,) = by_kind(render(), "CustomResourceDefinition")
    source = yaml.safe_load(SOURCE_CRD.read_text())
    assert rendered["spec"] == source["spec"]
    assert rendered["metadata"]["name"] == source["metadata"]["name"]
    assert rendered["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert rendered["metadata"]["labels"]["app.kubernetes.io/instance"] == "lp"


@pytest.mark.parametrize(("crds", "count", "kept"), [
    ({"enabled": False}, 0, None),
    ({"enabled": True, "keep": False}, 1, False),
    ({"enabled": True, "keep": True}, 1, True),
])
def test_crd_switches(crds: dict[str, bool], count: int, kept: bool | None) -> None:
    found = by_kind(render({"crds": crds}), "CustomResourceDefinition")
    assert len(found) == count
    if found:
        annotations = found[0]["metadata"].get("annotations") or {}
        assert ("helm.sh/resource-policy" in annotations) is kept


def test_examples_folder_holds_lorajob_samples() -> None:
    assert SAMPLES, "examples/*.yaml is empty"


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: Path(p).name)
def test_sample_fits_the_crd_schema(sample: Path) -> None:
    validator = _validator()
    docs = [d for d in yaml.safe_load_all(sample.read_text()) if d]
    lorajobs = [d for d in docs if d.get("kind") == "LoRAJob"]
    assert lorajobs, f"{sample.name} holds no LoRAJob"
    for doc in lorajobs:
        assert doc["apiVersion"] == "loraplane.dev/v1alpha1"
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda spec: spec.update(baseModle=spec.pop("baseModel")), "baseModle"),
    (lambda spec: spec["lora"].update(rank="thirty-two"), "rank"),
])
def test_schema_check_rejects_a_broken_sample(mutate: Any, field: str) -> None:
    doc = next(d for d in yaml.safe_load_all(SAMPLES[0].read_text()) if d and d.get("kind") == "LoRAJob")
    doc.setdefault("spec", {}).setdefault("lora", {"rank": 8})
    mutate(doc["spec"])
    messages = [f"{list(e.path)}: {e.message}" for e in _validator().iter_errors(doc)]
    assert any(field in m for m in messages), messages
