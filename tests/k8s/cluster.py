"""The operator tests' view of the real API server: namespace `default`, emptied before each test.

`Cluster` creates, reads, patches and deletes objects as the admin, and plays the kubelet for
pods that a test describes itself (`tests.operator.harness.runtime_pod`: a Pod whose runtime API
is named by the `loraplane.dev/runtime-url` annotation, e.g. a fake runtime). `Cluster.api` reaches
the fault proxy (proxy.py) that the code under test talks through: request counts, dropped watches,
410 Gone, conflicts. The tests of tests/k8s/test_operator_*.py run against it.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from loraplane.core.models.v1alpha1.lorajob import API_VERSION, PLURAL
from tests.k8s.controlplane import ControlPlane
from tests.k8s.proxy import FaultProxy
from tests.operator import harness

NAMESPACE = "default"


def collection(api_version: str, kind: str, namespace: str) -> str:
    plural = {"Pod": "pods", "Event": "events", "LoRAJob": PLURAL}[kind]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


class Api:
    """Object reads and writes as the admin, and the proxy's faults and counters, for the tests."""

    def __init__(self, http: httpx.Client, proxy: FaultProxy) -> None:
        self.http = http
        self.proxy = proxy

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        namespace = manifest["metadata"].setdefault("namespace", NAMESPACE)
        r = self.http.post(collection(manifest["apiVersion"], manifest["kind"], namespace), json=manifest)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def get(self, api_version: str, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        r = self.http.get(f"{collection(api_version, kind, namespace)}/{name}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return dict(r.json())

    def list(self, api_version: str, kind: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        r = self.http.get(collection(api_version, kind, namespace))
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    # The faults and counters of the code under test's connection.
    def request_count(self, verb: str | None = None, path: str | None = None) -> int:
        return self.proxy.request_count(verb, path)

    def drop_watches(self, path: str | None = None, *, at_least: int = 0) -> int:
        return self.proxy.drop_watches(path, at_least=at_least)

    def fail_next_watches(self, n: int) -> None:
        self.proxy.fail_next_watches(n)

    def conflict_next_writes(self, n: int, **match: str) -> None:
        self.proxy.conflict_next_writes(n, **match)


class Cluster:
    """Namespace `default` of the real API server, as the operator tests use it."""

    def __init__(self, plane: ControlPlane, proxy: FaultProxy) -> None:
        self.http = plane.api()
        self.api = Api(self.http, proxy)
        self.clean()

    def clean(self) -> None:
        """Remove what earlier tests left: LoRAJobs (their finalizers first; no operator runs now), pods, events."""
        jobs = collection(API_VERSION, "LoRAJob", NAMESPACE)
        for job in self.api.list(API_VERSION, "LoRAJob"):
            name = job["metadata"]["name"]
            if job["metadata"].get("finalizers"):
                self.http.patch(f"{jobs}/{name}", json={"metadata": {"finalizers": None}},
                                headers={"Content-Type": "application/merge-patch+json"})
            self.http.delete(f"{jobs}/{name}")
        for kind in ("Pod", "Event"):
            r = self.http.delete(collection("v1", kind, NAMESPACE), params={"gracePeriodSeconds": "0"})
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 15
        while self.api.list(API_VERSION, "LoRAJob") or self.api.list("v1", "Pod"):
            assert time.monotonic() < deadline, "namespace default did not empty"
            time.sleep(0.05)

    def add_pod(self, manifest: dict[str, Any]) -> None:
        """Create a pod and set its status, as the kubelet would (create ignores status)."""
        self.api.create(manifest)
        self.set_pod_status(manifest["metadata"]["name"], manifest["status"])

    def set_pod_status(self, name: str, status: dict[str, Any]) -> None:
        response = self.http.patch(
            f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text

    def job(self, name: str) -> dict[str, Any] | None:
        return self.api.get(API_VERSION, "LoRAJob", name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.job(name) or {}).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 15.0) -> dict[str, Any]:
        return harness.wait_phase(self.status, name, phase, timeout)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        response = self.http.patch(
            f"/apis/{API_VERSION}/namespaces/{NAMESPACE}/{PLURAL}/{name}",
            json={"spec": spec},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text

    def delete_job(self, name: str) -> None:
        response = self.http.delete(f"/apis/{API_VERSION}/namespaces/{NAMESPACE}/{PLURAL}/{name}")
        assert response.status_code in (200, 202), response.text

    def delete_pod(self, name: str) -> None:
        response = self.http.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}", params={"gracePeriodSeconds": "0"})
        assert response.status_code in (200, 202), response.text

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.http.get(f"/api/v1/namespaces/{NAMESPACE}/events").json().get("items", [])
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]

    def close(self) -> None:
        """Nothing to release: the admin client belongs to the control plane."""
