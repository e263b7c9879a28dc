"""The LoRAJob CRD: generated from the model, structural, validating, with immutable fields."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import yaml

from loraplane.core.models.v1alpha1 import lorajob

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("lorajob-*.yaml"))


def _gen_crd() -> Any:
    spec = importlib.util.spec_from_file_location("gen_crd", ROOT / "scripts" / "gen_crd.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_crd", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "crds" / "lorajob.yaml").read_text())


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for name, sub in node.get("properties", {}).items():
            out.extend(_walk(sub, f"{path}.{name}"))
        if "items" in node:
            out.extend(_walk(node["items"], f"{path}[]"))
    return out


def test_generated_file_matches_the_model() -> None:
    assert (ROOT / "crds" / "lorajob.yaml").read_text() == _gen_crd().render(), (
        "crds/lorajob.yaml drifted from the model; run python scripts/gen_crd.py"
    )


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title"} & node.keys(), path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert not ("additionalProperties" in node and "properties" in node), path


def test_names_scope_and_subresources(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "lorajobs.loraplane.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["lj"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Base Model": ".spec.baseModel",
        "Runtime": ".status.runtime.pod",
        "Step": ".status.progress.step",
        "Loss": ".status.progress.loss",
        "Tenant": ".spec.tenant",
        "Age": ".metadata.creationTimestamp",
    }


@pytest.mark.parametrize("field", ["baseModel", "lora", "tenant", "mode"])
def test_immutable_fields_carry_a_cel_transition_rule(schema: dict[str, Any], field: str) -> None:
    rules = schema["properties"]["spec"]["properties"][field]["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf", "message": f"{field} is immutable"} in rules


def test_status_keeps_unknown_fields(schema: dict[str, Any]) -> None:
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_crd_and_the_model(schema: dict[str, Any], example: Path) -> None:
    body = yaml.safe_load(example.read_text())
    jsonschema.Draft4Validator(schema).validate(body)
    job = lorajob.LoRAJob.from_body(body)
    assert job.metadata.labels[lorajob.TENANT_LABEL] == job.spec.tenant


def test_examples_cover_interactive_training_and_resume() -> None:
    specs = [yaml.safe_load(p.read_text())["spec"] for p in EXAMPLES]
    assert any(s["mode"] == "interactive" for s in specs)
    assert any(s["mode"] == "training" and "resumeFrom" not in s for s in specs)
    assert any("resumeFrom" in s for s in specs)


def _base_spec() -> dict[str, Any]:
    return {"baseModel": "m", "tenant": "t", "mode": "training", "training": {"dataset": "file:///d.jsonl"}}


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("lora", "rank"), 0, "rank"),
        (("lora", "seed"), -1, "seed"),
        (("lora", "alpha"), 0, "alpha"),
        (("mode",), "batch", "mode"),
        (("training", "loss"), "mse", "loss"),
        (("training", "batchSize"), 0, "batchSize"),
        (("training", "learningRate"), 0, "learningRate"),
        (("training", "outputName"), "a/b", "outputName"),
        (("backoffLimit",), -1, "backoffLimit"),
        (("ttlSecondsAfterFinished",), -5, "ttlSecondsAfterFinished"),
    ],
)
def test_out_of_range_values_are_refused_by_schema_and_model(
    schema: dict[str, Any], path: tuple[str, ...], value: Any, field: str
) -> None:
    spec = _base_spec()
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    body = {"apiVersion": lorajob.API_VERSION, "kind": "LoRAJob", "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(body)
    with pytest.raises(pydantic.ValidationError, match=f"(?i){field}"):
        lorajob.LoRAJob.from_body(body)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"baseModel": "m", "tenant": "t", "mode": "training"}, "training is required"),
        ({**_base_spec(), "training": {"dataset": "d", "steps": 3, "epochs": 1}}, "steps or epochs"),
    ],
)
def test_cross_field_rules_are_in_the_model_and_the_crd(schema: dict[str, Any], spec: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        lorajob.LoRAJobSpec.model_validate(spec)
    rules = [r["rule"] for r in schema["properties"]["spec"]["x-kubernetes-validations"]]
    rules += [r["rule"] for r in schema["properties"]["spec"]["properties"]["training"]["x-kubernetes-validations"]]
    assert "self.mode != 'training' || has(self.training)" in rules
    assert "!(has(self.steps) && has(self.epochs))" in rules


