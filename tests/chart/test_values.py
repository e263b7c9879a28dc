"""values.schema.json rejects typos and wrong types; the chart fails readably on combinations that
cannot work; every value in values.yaml is documented."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest

from tests.chart.rendering import CHART_DIR, render

RUNTIME = {"name": "tiny", "baseModel": "org/tiny", "model": {"image": {"path": "/models/tiny"}}}


@pytest.mark.parametrize(("values", "message"), [
    ({"gatway": {"replicas": 1}}, "additional properties 'gatway' not allowed"),
    ({"gateway": {"replica": 1}}, "additional properties 'replica' not allowed"),
    ({"gateway": {"replicas": "two"}}, "/gateway/replicas"),
    ({"store": {"type": "nfs"}}, "/store/type"),
    ({"crds": {"enabled": "yes"}}, "/crds/enabled"),
    ({"logLevel": "verbose"}, "/logLevel"),
    ({"gateway": {"longPollSeconds": 90}}, "/gateway/longPollSeconds"),
    ({"runtimes": [{**RUNTIME, "gpu": 1}]}, "additional properties 'gpu' not allowed"),
    ({"runtimes": [{**RUNTIME, "gpus": "1"}]}, "/runtimes/0/gpus"),
    ({"runtimes": [{**RUNTIME, "name": "Tiny_Model"}]}, "/runtimes/0/name"),
    ({"runtimes": [{"name": "tiny", "model": RUNTIME["model"]}]}, "baseModel"),
    ({"runtimes": [{**RUNTIME, "model": {"hub": {"id": "org/tiny"}}}]}, "cacheClaim"),
    ({"runtimes": [{**RUNTIME, "dtype": "fp8"}]}, "/runtimes/0/dtype"),
    ({"gateway": {"resources": {"limits": {"memory": "lots"}}}}, "/gateway/resources/limits/memory"),
])
def test_schema_rejects_typos_and_wrong_types(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as info:
        render(values)
    assert message in str(info.value)


@pytest.mark.parametrize(("values", "message"), [
    ({"apiKeys": {"existingSecret": "keys", "tenants": {"a": "tml-x"}}},
     "set either apiKeys.existingSecret or apiKeys.tenants, not both"),
    ({"apiKeys": {"tenants": {"alice": "secret"}}}, 'apiKeys.tenants.alice: a key must start with "tml-"'),
    ({"apiKeys": {"tenants": {"al ice": "tml-x"}}}, 'tenant name "al ice"'),
    ({"store": {"type": "s3", "s3": {"url": "gs://bucket"}}}, "store.s3.url must start with s3://"),
    ({"store": {"pvc": {"existingClaim": "x"}}}, "set store.pvc.create=false"),
    ({"store": {"pvc": {"create": False}}}, "set store.pvc.existingClaim or store.pvc.create=true"),
    ({"runtimes": [RUNTIME, RUNTIME]}, 'runtimes[1].name "tiny" is used twice'),
    ({"runtimes": [{**RUNTIME, "model": {}}]}, "runtimes[0] (tiny): model needs exactly one of pvc, image or hub"),
    ({"runtimes": [{**RUNTIME, "model": {"image": {"path": "/m"}, "pvc": {"claimName": "c"}}}]},
     "model needs exactly one of pvc, image or hub (got 2)"),
    ({"runtimes": [{**RUNTIME, "gpus": 2, "resources": {"limits": {"nvidia.com/gpu": 2}}}]},
     "set the GPU count with gpus or resources.limits.nvidia.com/gpu, not both"),
    ({"runtimes": [{**RUNTIME, "maxResidentAdapters": 8, "maxAdapters": 4}]},
     "maxResidentAdapters (8) cannot exceed maxAdapters (4)"),
    ({"fullnameOverride": "a" * 40, "runtimes": [{**RUNTIME, "name": "b" * 20}]}, "longer than 52 characters"),
    ({"gateway": {"ingress": {"enabled": True}}}, "gateway.ingress.enabled needs at least one entry"),
])
def test_invalid_combinations_fail_with_a_readable_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as info:
        render(values)
    assert message in str(info.value)


def test_every_value_in_values_yaml_has_a_comment() -> None:
    """Each leaf value has a comment right above it, or sits inside a commented parent (resources)."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    commented: dict[int, bool] = {}  # indent -> whether the open key at that indent is commented
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        commented = {k: v for k, v in commented.items() if k < indent}
        here = i > 0 and lines[i - 1].strip().startswith("#")
        inherited = any(commented.values())
        commented[indent] = here
        if rest.strip() and not (here or inherited):
            undocumented.append(f"{i + 1}: {key}")
    assert undocumented == []


def test_schema_forbids_unknown_keys_in_every_object() -> None:
    import json

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    loose: list[str] = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path)
            for key, value in node.items():
                visit(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                visit(value, f"{path}/{i}")

    visit(schema, "")
    assert loose == []


def _schema_has(schema: dict[str, Any], path: list[str]) -> bool:
    node = schema
    for key in path:
        properties = node.get("properties") or {}
        if key not in properties:
            return False
        node = properties[key]
    return True


def test_every_value_the_templates_read_is_declared_in_the_schema() -> None:
    """A misspelt `.Values.x.y` in a template renders as empty without any error; this catches it."""
    import json

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    text = "\n".join(p.read_text() for p in (CHART_DIR / "templates").iterdir())
    used = sorted(set(re.findall(r"\.Values\.([A-Za-z][\w.]*[\w])", text)))
    assert used
    assert [u for u in used if not _schema_has(schema, u.split("."))] == []


def test_every_value_the_schema_declares_has_a_default_in_values_yaml() -> None:
    import json

    import yaml

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    missing: list[str] = []

    def visit(node: dict[str, Any], values: Any, path: str) -> None:
        for key, sub in (node.get("properties") or {}).items():
            if not isinstance(values, dict) or key not in values:
                missing.append(f"{path}{key}")
            elif sub.get("type") == "object" and "properties" in sub and values[key]:
                # An empty default ({}) is an optional Kubernetes object such as affinity.
                visit(sub, values[key], f"{path}{key}.")

    visit(schema, defaults, "")
    assert missing == []


def test_every_runtime_field_the_templates_read_is_declared_in_the_schema() -> None:
    import json

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    runtime = schema["properties"]["runtimes"]["items"]
    text = "\n".join(p.read_text() for p in (CHART_DIR / "templates").iterdir())
    used = sorted(set(re.findall(r"\$rt\.([A-Za-z][\w.]*[\w])", text)))
    assert "model.pvc.claimName" in used
    assert [u for u in used if not _schema_has(runtime, u.split("."))] == []


def _setting_exists(env_name: str) -> bool:
    """Whether `LORAPLANE_<SECTION>__<NAME>` (or `LORAPLANE_<NAME>`) names a field of `Settings`."""
    from loraplane.core.settings import Settings

    parts = env_name.removeprefix("LORAPLANE_").lower().split("__")
    model: Any = Settings
    for part in parts:
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = field.annotation
    return True


def test_every_setting_the_chart_sets_is_one_the_components_read() -> None:
    values = {"runtimes": [{**RUNTIME, "maxPassTokens": 2048, "maxLoraRank": 64}]}
    env = [e["name"] for doc in render(values) if doc["kind"] in ("Deployment", "StatefulSet")
           for c in doc["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])]
    settings = sorted({name for name in env if name.startswith("LORAPLANE_")})
    assert "LORAPLANE_RUNTIME__MAX_LORA_RANK" in settings and "LORAPLANE_RUNTIME__MAX_PASS_TOKENS" in settings
    assert "LORAPLANE_GATEWAY__JOB_START_TIMEOUT_S" in settings
    assert [name for name in settings if not _setting_exists(name)] == []
