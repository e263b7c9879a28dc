"""Least-privilege RBAC, hardened pods, and runtimes reachable only from the gateway and operator."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.rendering import GPU_VALUES, by_kind, load_values, one, pod_specs, render

VALUE_SETS = {"defaults": {}, "gpu": load_values(GPU_VALUES)}

OPERATOR_RULES = [
    {"apiGroups": ["loraplane.dev"], "resources": ["lorajobs"], "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": ["loraplane.dev"], "resources": ["lorajobs/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
]
GATEWAY_RULES = [
    {"apiGroups": ["loraplane.dev"], "resources": ["lorajobs"],
     "verbs": ["get", "list", "watch", "create", "update", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
]


def test_rbac_grants_exactly_the_rules_each_component_needs() -> None:
    docs = render(VALUE_SETS["gpu"])
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(docs, "Role")}
    assert roles == {"lp-loraplane-operator": OPERATOR_RULES, "lp-loraplane-gateway": GATEWAY_RULES}
    bindings = {
        b["metadata"]["name"]: (b["roleRef"]["name"], [s["name"] for s in b["subjects"]])
        for b in by_kind(docs, "RoleBinding")
    }
    assert bindings == {
        "lp-loraplane-operator": ("lp-loraplane-operator", ["lp-loraplane-operator"]),
        "lp-loraplane-gateway": ("lp-loraplane-gateway", ["lp-loraplane-gateway"]),
    }


def test_only_the_operator_and_gateway_mount_a_service_account_token() -> None:
    docs = render(VALUE_SETS["gpu"])
    mounted = {
        name: spec.get("automountServiceAccountToken") for name, spec in pod_specs(docs)
    }
    assert mounted == {
        "Deployment/lp-loraplane-gateway": True,
        "Deployment/lp-loraplane-operator": True,
        "StatefulSet/lp-loraplane-rt-qwen3-0-6b": False,
        "StatefulSet/lp-loraplane-rt-llama-8b": False,
    }
    runtime_sa = one(docs, "ServiceAccount", "lp-loraplane-runtime")
    assert runtime_sa["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_every_pod_runs_non_root_read_only_without_capabilities(values_name: str) -> None:
    specs = pod_specs(render(VALUE_SETS[values_name]))
    assert specs
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] != 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec.get("initContainers", []) + spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert "add" not in sc["capabilities"], name
            tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in volumes[tmp["name"]], name


def test_runtime_pods_get_an_in_memory_shm_and_probes() -> None:
    docs = render(VALUE_SETS["gpu"])
    for sts in by_kind(docs, "StatefulSet"):
        spec = sts["spec"]["template"]["spec"]
        container = spec["containers"][0]
        shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert next(v for v in spec["volumes"] if v["name"] == shm["name"])["emptyDir"]["medium"] == "Memory"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_network_policy_admits_only_gateway_and_operator_to_runtimes() -> None:
    docs = render(VALUE_SETS["gpu"])
    (policy,) = by_kind(docs, "NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector["loraplane.dev/component"] == "runtime"
    assert selector["app.kubernetes.io/instance"] == "lp"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    peers = [p["podSelector"]["matchLabels"]["loraplane.dev/component"] for p in rule["from"]]
    assert peers == ["gateway", "operator"]
    assert all(p["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "lp" for p in rule["from"])
    assert rule["ports"] == [{"protocol": "TCP", "port": 8001}]
    for sts in by_kind(docs, "StatefulSet"):
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()


def _pdbs(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p["spec"] for p in by_kind(render(values), "PodDisruptionBudget")}


def test_disruption_budgets_cover_gateway_and_each_runtime() -> None:
    pdbs = _pdbs(VALUE_SETS["gpu"])
    assert pdbs["lp-loraplane-gateway"]["minAvailable"] == 1
    assert pdbs["lp-loraplane-rt-qwen3-0-6b"]["maxUnavailable"] == 1
    assert pdbs["lp-loraplane-rt-llama-8b"]["maxUnavailable"] == 1
    assert "lp-loraplane-gateway" not in _pdbs({"gateway": {"replicas": 1}})


def test_api_keys_come_from_the_named_secret_and_never_from_values_in_plain_env() -> None:
    docs = render(VALUE_SETS["gpu"])
    assert by_kind(docs, "Secret") == []
    spec = one(docs, "Deployment", "lp-loraplane-gateway")["spec"]["template"]["spec"]
    keys = next(v for v in spec["volumes"] if v["name"] == "api-keys")
    assert keys["secret"]["secretName"] == "loraplane-api-keys"
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["LORAPLANE_GATEWAY__API_KEYS_FILE"] == "/etc/loraplane/api-keys/api-keys"
    assert spec["containers"][0]["envFrom"] == [{"secretRef": {"name": "loraplane-s3"}}]


def test_tenant_keys_become_the_secret_file_the_gateway_reads() -> None:
    digest = "sha256:" + "ab" * 32
    docs = render({"apiKeys": {"tenants": {"alice": digest, "bob": "tml-bobkey"}}})
    secret = one(docs, "Secret", "lp-loraplane-api-keys")
    assert secret["stringData"]["api-keys"].split() == [f"alice={digest}", "bob=tml-bobkey"]
    spec = one(docs, "Deployment", "lp-loraplane-gateway")["spec"]["template"]["spec"]
    keys = next(v for v in spec["volumes"] if v["name"] == "api-keys")
    assert keys["secret"]["secretName"] == "lp-loraplane-api-keys"
