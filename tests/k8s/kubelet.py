"""The kubelet's part, played by the tests: runtime pods of the chart's StatefulSets, backed by real runtimes.

The control plane has no scheduler, no controllers and no nodes. For each runtime pod the chart's
StatefulSet would get, `Kubelet.start_pod` starts a real runtime (tiny model) on its own loopback
address and the StatefulSet's container port, creates the Pod object from the StatefulSet's
template (its labels, annotations and spec, the name `<statefulset>-<ordinal>`, an owner reference)
and sets its status as a kubelet would: Running, Ready, `podIP` that loopback address. The operator
and the gateway find the runtime exactly as in a cluster: by label, then `podIP` and the port.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

from tests.k8s.controlplane import ControlPlane
from tests.operator.real_runtime import RealRuntime

#: Pod addresses are drawn from here, never from outside 127.0.0.0/8.
LOOPBACK_PREFIX = "127"


def container_port(statefulset: dict[str, Any], name: str = "http") -> int:
    for container in statefulset["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports") or []:
            if port.get("name") == name:
                return int(port["containerPort"])
    raise AssertionError(f"StatefulSet {statefulset['metadata']['name']} has no port named {name!r}")


def pod_from_template(statefulset: dict[str, Any], ordinal: int) -> dict[str, Any]:
    """The Pod object the StatefulSet controller would create for `ordinal` (the parts tests need)."""
    meta, spec = statefulset["metadata"], statefulset["spec"]
    template = copy.deepcopy(spec["template"])
    name = f"{meta['name']}-{ordinal}"
    labels = dict(template["metadata"].get("labels") or {})
    labels["statefulset.kubernetes.io/pod-name"] = name
    labels["apps.kubernetes.io/pod-index"] = str(ordinal)
    pod_spec = template["spec"]
    pod_spec["hostname"] = name
    pod_spec["subdomain"] = spec.get("serviceName", meta["name"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict(template["metadata"].get("annotations") or {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": pod_spec,
    }


def running_status(ip: str, *, ready: bool = True) -> dict[str, Any]:
    flag = "True" if ready else "False"
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "127.0.0.1",
        "conditions": [{"type": t, "status": "True" if t in ("PodScheduled", "Initialized") else flag}
                       for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
        "containerStatuses": [{"name": "runtime", "ready": ready, "restartCount": 0, "image": "loraplane:test",
                               "imageID": "", "started": True,
                               "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
    }


class Kubelet:
    """Runs the runtime pods of one namespace on loopback; `close()` stops every runtime."""

    def __init__(self, plane: ControlPlane, namespace: str, model_dir: Path) -> None:
        self.plane = plane
        self.namespace = namespace
        self.model_dir = model_dir
        self.runtimes: dict[str, RealRuntime] = {}

    def statefulset(self, name: str) -> dict[str, Any]:
        r = self.plane.api().get(f"/apis/apps/v1/namespaces/{self.namespace}/statefulsets/{name}")
        assert r.status_code == 200, r.text
        return r.json()

    def _runtime(self, base_model: str, port: int) -> RealRuntime:
        for _ in range(50):
            host = f"{LOOPBACK_PREFIX}.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
            try:
                return RealRuntime(self.model_dir, base_model, host=host, port=port)
            except OSError:  # taken on that address by another run: draw again
                continue
        raise AssertionError(f"no free loopback address for port {port}")

    def start_pod(self, statefulset: str, ordinal: int, *, ready: bool = True) -> RealRuntime:
        """Start the runtime of pod `<statefulset>-<ordinal>` and publish the pod as Running."""
        sts = self.statefulset(statefulset)
        base_model = sts["metadata"]["annotations"]["loraplane.dev/base-model"]
        runtime = self._runtime(base_model, container_port(sts)).start()
        pod = pod_from_template(sts, ordinal)
        name = pod["metadata"]["name"]
        self.runtimes[name] = runtime
        r = self.plane.api().post(f"/api/v1/namespaces/{self.namespace}/pods", json=pod)
        assert r.status_code == 201, r.text
        self.set_ready(name, ready)
        return runtime

    def set_ready(self, name: str, ready: bool) -> None:
        status = running_status(self.runtimes[name].host, ready=ready)
        r = self.plane.api().patch(f"/api/v1/namespaces/{self.namespace}/pods/{name}/status",
                                   json={"status": status},
                                   headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text

    def lose_pod(self, name: str) -> None:
        """The node is gone: the runtime dies and the pod object is removed."""
        self.runtimes.pop(name).stop()
        r = self.plane.api().delete(f"/api/v1/namespaces/{self.namespace}/pods/{name}",
                                    params={"gracePeriodSeconds": "0"})
        assert r.status_code == 200, r.text

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.stop()
        self.runtimes.clear()
