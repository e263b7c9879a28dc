"""loraplane as the chart deploys it, on the real API server: operator and gateway as their ServiceAccounts.

`LoraplaneStack` installs helm/loraplane into a test namespace (one CPU runtime entry of the tiny
model, two replicas), then runs what the chart's pods would run, in this process, each with the
same settings its Deployment gives it (read back from the server) and authenticated with a token
of its own ServiceAccount, so that only the chart's Roles authorize it. The runtime pods are
played by `Kubelet` (real runtimes on loopback addresses). Only the store (a temporary file://
folder shared by all) and the test-speed intervals differ from a cluster.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tinker
import yaml

from loraplane.core.settings import Settings
from tests.k8s.conftest import CHART, tiny_values, write_values
from tests.k8s.controlplane import ControlPlane
from tests.k8s.gateway import GatewayServer
from tests.k8s.kubelet import Kubelet
from tests.k8s.proxy import FaultProxy
from tests.operator.harness import operator, wait_for

RELEASE = "lp"
JOBS = "/apis/loraplane.dev/v1alpha1/namespaces/{namespace}/lorajobs"


def settings_from_env(env: list[dict[str, Any]], namespace: str) -> Settings:
    """The Settings a container gets from its LORAPLANE_* variables (fieldRef namespace resolved)."""
    nested: dict[str, Any] = {}
    for var in env:
        name = var["name"]
        if not name.startswith("LORAPLANE_"):
            continue
        if "value" in var:
            value = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            value = namespace
        else:
            continue
        keys = name.removeprefix("LORAPLANE_").lower().split("__")
        node = nested
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return Settings(**nested)


class LoraplaneStack:
    """A release of the chart in `namespace` and the means to run its components against it."""

    def __init__(self, plane: ControlPlane, namespace: str, model_dir: Path, work: Path,
                 values: dict[str, Any] | None = None) -> None:
        self.plane = plane
        self.namespace = namespace
        self.work = work
        self.store_url = f"file://{work / 'store'}"
        plane.helm("install", RELEASE, str(CHART), "-n", namespace,
                   "-f", str(write_values(work / "values.yaml", tiny_values(**(values or {})))))
        self.kubelet = Kubelet(plane, namespace, model_dir)
        (self.runtime_set,) = self._names("statefulsets", "runtime")
        self.operator_settings = self._settings("operator").operator.model_copy(
            update={"progress_interval_s": 0.05, "health_interval_s": 0.1})
        self.gateway_settings = self._settings("gateway")
        self.gateway_settings.gateway.host = "127.0.0.1"
        self.gateway_settings.gateway.long_poll_s = 5.0
        self.operator_kubeconfig = self._service_account_kubeconfig("operator")
        self.gateway_kubeconfig = self._service_account_kubeconfig("gateway")
        self.keys = self._api_keys()
        self.proxy: FaultProxy | None = None

    # -- what the chart made ------------------------------------------------------------------------

    def _get(self, path: str, **params: str) -> dict[str, Any]:
        r = self.plane.api().get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def _names(self, resource: str, component: str) -> list[str]:
        group = "api/v1" if resource in ("serviceaccounts", "secrets") else "apis/apps/v1"
        items = self._get(f"/{group}/namespaces/{self.namespace}/{resource}",
                          labelSelector=f"app.kubernetes.io/instance={RELEASE},loraplane.dev/component={component}")
        return [i["metadata"]["name"] for i in items["items"]]

    def _settings(self, component: str) -> Settings:
        (name,) = self._names("deployments", component)
        deployment = self._get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        return settings_from_env(container.get("env") or [], self.namespace)

    def _service_account_kubeconfig(self, component: str) -> Path:
        (name,) = self._names("serviceaccounts", component)
        return self.plane.service_account_kubeconfig(self.namespace, name, self.work / f"{component}.kubeconfig")

    def _api_keys(self) -> dict[str, str]:
        """The tenant keys of the Secret the chart generated (one for tenant "default")."""
        secrets = self._get(f"/api/v1/namespaces/{self.namespace}/secrets",
                            labelSelector=f"app.kubernetes.io/instance={RELEASE}")["items"]
        (secret,) = [s for s in secrets if s["type"] == "Opaque"]
        text = base64.b64decode(next(iter(secret["data"].values()))).decode()
        return dict(line.split("=", 1) for line in text.splitlines() if line.strip())

    def through_proxy(self) -> FaultProxy:
        """Point the operator's and the gateway's kubeconfigs at a fault proxy in front of the server."""
        pki = self.plane.pki
        self.proxy = FaultProxy(self.plane.url, pki / "ca.crt", pki / "server.crt", pki / "server.key").start()
        for path in (self.operator_kubeconfig, self.gateway_kubeconfig):
            config = yaml.safe_load(path.read_text())
            config["clusters"][0]["cluster"]["server"] = self.proxy.url
            path.write_text(yaml.safe_dump(config))
        return self.proxy

    # -- components ----------------------------------------------------------------------------------

    @contextmanager
    def operator(self) -> Iterator[None]:
        with operator(self.operator_kubeconfig, self.store_url, self.operator_settings):
            yield

    @contextmanager
    def gateway(self) -> Iterator[GatewayServer]:
        with GatewayServer(self.gateway_settings, self.store_url, self.keys, kubeconfig=self.gateway_kubeconfig,
                           from_environment=False) as server:
            yield server

    def sdk(self, gateway: GatewayServer) -> tinker.ServiceClient:
        return tinker.ServiceClient(base_url=gateway.url, api_key=self.keys["default"])

    def start_runtime_pod(self, ordinal: int, *, ready: bool = True) -> str:
        self.kubelet.start_pod(self.runtime_set, ordinal, ready=ready)
        return f"{self.runtime_set}-{ordinal}"

    # -- LoRAJobs, read as the admin -------------------------------------------------------------------

    def apply(self, body: dict[str, Any]) -> None:
        self.plane.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(body))

    def jobs(self) -> list[dict[str, Any]]:
        return self._get(JOBS.format(namespace=self.namespace))["items"]

    def job(self, name: str) -> dict[str, Any] | None:
        r = self.plane.api().get(f"{JOBS.format(namespace=self.namespace)}/{name}")
        return r.json() if r.status_code == 200 else None

    def status(self, name: str) -> dict[str, Any]:
        return (self.job(name) or {}).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 60.0) -> dict[str, Any]:
        try:
            return wait_for(lambda: self.status(name).get("phase") == phase and self.status(name), timeout)
        except AssertionError:
            raise AssertionError(f"{name} not {phase} within {timeout}s; status: {self.status(name)}") from None

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self._get(f"/api/v1/namespaces/{self.namespace}/events")["items"]
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]

    def close(self) -> None:
        self.kubelet.close()
        if self.proxy is not None:
            self.proxy.close()


def wait_gone(stack: LoraplaneStack, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while stack.job(name) is not None:
        assert time.monotonic() < deadline, f"LoRAJob {name} still there after {timeout}s"
        time.sleep(0.05)
