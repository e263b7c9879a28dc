"""`helm install`, `helm upgrade` and `helm uninstall` of helm/loraplane against a real API server.

The chart tests render offline; here every rendered object must be accepted by kube-apiserver
(its validation, defaulting and admission), the CRD must become Established, and `lookup` sees a
real cluster (the generated API key survives an upgrade).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from tests.k8s.conftest import CHART, SYSTEM_NAMESPACE, SYSTEM_RELEASE
from tests.k8s.controlplane import ControlPlane

GPU_VALUES = CHART / "examples" / "values-gpu.yaml"

#: prometheus-operator's ServiceMonitor kind, as a cluster with that operator serves it; values-gpu.yaml
#: enables a ServiceMonitor, which a cluster without the kind refuses ("no matches for kind").
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList", "plural": "servicemonitors",
                  "singular": "servicemonitor"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


def manifest_objects(plane: ControlPlane, release: str, namespace: str) -> list[dict]:
    out = plane.helm("get", "manifest", release, "--namespace", namespace).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def assert_all_stored(plane: ControlPlane, release: str, namespace: str) -> list[str]:
    """Every object of the release's manifest exists on the server; returns their kind/name."""
    objects = manifest_objects(plane, release, namespace)
    assert objects
    manifest = yaml.safe_dump_all(objects)
    got = plane.kubectl("get", "-f", "-", "--namespace", namespace, "-o", "name", input=manifest).stdout.split()
    assert len(got) == len(objects), got
    return got


def test_default_values_install_with_every_object_accepted_and_the_crd_established(
    control_plane: ControlPlane, system_release: str
) -> None:
    status = json.loads(control_plane.helm("status", system_release, "-n", SYSTEM_NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    names = assert_all_stored(control_plane, system_release, SYSTEM_NAMESPACE)
    assert "customresourcedefinition.apiextensions.k8s.io/lorajobs.loraplane.dev" in names
    assert any(n.startswith("deployment.apps/") for n in names) and any(n.startswith("role.rbac") for n in names)
    crd = json.loads(control_plane.kubectl("get", "crd", "lorajobs.loraplane.dev", "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["lj"]


def test_upgrade_keeps_the_generated_api_key(control_plane: ControlPlane, system_release: str) -> None:
    def key() -> str:
        secrets = json.loads(control_plane.kubectl(
            "get", "secrets", "-n", SYSTEM_NAMESPACE, "-l", f"app.kubernetes.io/instance={SYSTEM_RELEASE}",
            "-o", "json").stdout)["items"]
        (secret,) = [s for s in secrets if s["type"] == "Opaque"]
        return base64.b64decode(next(iter(secret["data"].values()))).decode()

    before = key()
    assert before.startswith("default=tml-"), before
    control_plane.helm("upgrade", system_release, str(CHART), "-n", SYSTEM_NAMESPACE, "--reuse-values",
                       "--set", "logLevel=debug")
    assert key() == before
    deployments = json.loads(control_plane.kubectl("get", "deployments", "-n", SYSTEM_NAMESPACE,
                                                   "-o", "json").stdout)["items"]
    envs = [e for d in deployments for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])]
    assert {"name": "LORAPLANE_LOG_LEVEL", "value": "debug"} in envs


def test_gpu_values_install_upgrade_and_uninstall(
    control_plane: ControlPlane, system_release: str, namespace: str, tmp_path: Path
) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(SERVICE_MONITOR_CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                          "crd/servicemonitors.monitoring.coreos.com")
    # The CRD belongs to the session's release; a second release in the cluster leaves it out.
    control_plane.helm("install", "gpu", str(CHART), "-n", namespace, "-f", str(GPU_VALUES),
                       "--set", "crds.enabled=false")
    names = assert_all_stored(control_plane, "gpu", namespace)
    assert "servicemonitor.monitoring.coreos.com/gpu-loraplane" in names, names
    assert "ingress.networking.k8s.io/gpu-loraplane-gateway" in names, names
    sts = json.loads(control_plane.kubectl("get", "statefulsets", "-n", namespace, "-o", "json").stdout)["items"]
    assert sorted(s["spec"]["replicas"] for s in sts) == [1, 2]
    for s in sts:
        (container,) = s["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"

    control_plane.helm("upgrade", "gpu", str(CHART), "-n", namespace, "--reuse-values",
                       "--set", "gateway.replicas=1")
    (gateway,) = json.loads(control_plane.kubectl(
        "get", "deployments", "-n", namespace, "-l", "app.kubernetes.io/component=gateway", "-o", "json").stdout)["items"]
    assert gateway["spec"]["replicas"] == 1
    history = json.loads(control_plane.helm("history", "gpu", "-n", namespace, "-o", "json").stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]

    control_plane.helm("uninstall", "gpu", "-n", namespace)
    left = control_plane.kubectl("get", "deployments,statefulsets,services,roles,rolebindings,serviceaccounts,"
                                 "servicemonitors,ingresses", "-n", namespace,
                                 "-l", "app.kubernetes.io/instance=gpu", "-o", "name").stdout.split()
    assert left == []
    # The LoRAJob CRD is untouched by a release that does not own it.
    control_plane.kubectl("get", "crd", "lorajobs.loraplane.dev")
