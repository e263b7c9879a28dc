"""The chart lints, renders, and every rendered manifest is valid for Kubernetes 1.29 and 1.37."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from tests.chart.rendering import CHART_DIR, GPU_VALUES, by_kind, load_values, one, render, render_notes

#: Kinds kubernetes-validate has no schema for (custom resources); checked by their own tests.
CUSTOM_KINDS = {"ServiceMonitor"}
VALUE_SETS = {"defaults": None, "gpu": GPU_VALUES}


def _values(name: str) -> dict[str, Any]:
    path = VALUE_SETS[name]
    return load_values(path) if path else {}


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_chart_lints_without_errors_or_warnings(values_name: str) -> None:
    report = helm.lint(CHART_DIR, _values(values_name), strict=True, namespace="ml")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", ["1.29.0", "1.37.0"])
@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_every_rendered_manifest_validates_strictly(values_name: str, kube_version: str) -> None:
    docs = render(_values(values_name))
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}") from exc


def test_default_values_render_the_control_plane_and_no_runtime() -> None:
    kinds = sorted({d["kind"] for d in render()})
    assert kinds == [
        "CustomResourceDefinition", "Deployment", "PersistentVolumeClaim", "PodDisruptionBudget", "Role",
        "RoleBinding", "Secret", "Service", "ServiceAccount",
    ]


def test_gpu_example_renders_one_statefulset_per_runtime_with_gpus_and_shm() -> None:
    values = load_values(GPU_VALUES)
    docs = render(values)
    sets = by_kind(docs, "StatefulSet")
    assert [s["metadata"]["name"] for s in sets] == [f"lp-loraplane-rt-{rt['name']}" for rt in values["runtimes"]]
    for sts, rt in zip(sets, values["runtimes"], strict=True):
        pod = sts["spec"]["template"]
        assert sts["spec"]["replicas"] == rt["replicas"]
        assert pod["metadata"]["labels"]["loraplane.dev/component"] == "runtime"
        assert "/" not in pod["metadata"]["labels"]["loraplane.dev/base-model"]
        assert pod["metadata"]["annotations"]["loraplane.dev/base-model"] == rt["baseModel"]
        container = pod["spec"]["containers"][0]
        assert container["args"] == ["runtime"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == rt["gpus"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["LORAPLANE_RUNTIME__BASE_MODEL"] == rt["baseModel"]
        assert env["LORAPLANE_RUNTIME__MAX_RESIDENT_ADAPTERS"] == str(rt["maxResidentAdapters"])
        assert env["LORAPLANE_STORE__URL"] == "s3://ml-artifacts/loraplane"
        shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": rt["shmSize"]}
        assert pod["spec"]["tolerations"] == rt["tolerations"]


@pytest.mark.parametrize(
    ("model", "model_path", "mount"),
    [
        ({"pvc": {"claimName": "models", "subPath": "tiny"}}, "/models/base", ("/models/base", "tiny")),
        ({"image": {"path": "/opt/models/tiny"}}, "/opt/models/tiny", None),
        ({"hub": {"id": "org/tiny", "cacheClaim": "hf"}}, "org/tiny", ("/models/hub-cache", None)),
    ],
)
def test_each_model_source_sets_the_model_path_and_mount(
    model: dict[str, Any], model_path: str, mount: tuple[str, str | None] | None
) -> None:
    docs = render({"runtimes": [{"name": "tiny", "baseModel": "org/tiny", "model": model, "gpus": 0}]})
    container = one(docs, "StatefulSet", "lp-loraplane-rt-tiny")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LORAPLANE_RUNTIME__MODEL_PATH"] == model_path
    assert env["LORAPLANE_RUNTIME__DEVICE"] == "cpu"
    assert "nvidia.com/gpu" not in (container.get("resources") or {}).get("limits", {})
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] == "model"}
    if mount is None:
        assert mounts == {}
    else:
        path, sub_path = mount
        assert mounts[path]["readOnly"] is True
        assert mounts[path].get("subPath") == sub_path


def test_gateway_announces_every_runtime_base_model() -> None:
    docs = render(load_values(GPU_VALUES))
    args = one(docs, "Deployment", "lp-loraplane-gateway")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["gateway", "--model", "Qwen/Qwen3-0.6B", "--model", "meta-llama/Llama-3.1-8B"]


def test_operator_is_one_replica_recreate_with_liveness() -> None:
    dep = one(render(), "Deployment", "lp-loraplane-operator")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080} in container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LORAPLANE_OPERATOR__RUNTIME_SELECTOR"] == "loraplane.dev/component=runtime,app.kubernetes.io/instance=lp"


@pytest.mark.parametrize("token_secret", ["", "lp-metrics"])
def test_service_monitor_scrapes_every_metrics_service(token_secret: str) -> None:
    """The gateway's /metrics takes a bearer token: scraped only when the chart names its Secret."""
    values = load_values(GPU_VALUES)
    values["gateway"]["metricsToken"] = {"existingSecret": token_secret, "key": "token"}
    docs = render(values)
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in by_kind(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    # operator metrics, two runtime pools, and the gateway when its token is configured
    assert len(scraped) == (4 if token_secret else 3)
    for svc in scraped:
        assert ports & {p["name"] for p in svc["spec"]["ports"]}, svc["metadata"]["name"]
    (http,) = [e for e in monitor["spec"]["endpoints"] if e["port"] == "http"]
    assert http.get("bearerTokenSecret") == ({"name": token_secret, "key": "token"} if token_secret else None)


def test_notes_tell_how_to_point_the_sdk_at_the_gateway() -> None:
    notes = render_notes()
    assert "export TINKER_BASE_URL=" in notes
    assert "export TINKER_API_KEY=" in notes
    assert "no runtimes are configured" in notes


def test_generated_api_key_has_the_sdk_prefix() -> None:
    secret = one(render(), "Secret", "lp-loraplane-api-keys")
    (line,) = secret["stringData"]["api-keys"].split()
    tenant, _, key = line.partition("=")
    assert tenant == "default" and key.startswith("tml-") and len(key) == 44
