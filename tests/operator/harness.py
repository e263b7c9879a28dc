"""Helpers of the operator's cluster tests: the operator in a thread, runtime pods, object edits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from loraplane.core.models.v1alpha1.lorajob import API_VERSION, KIND, PLURAL
from loraplane.core.settings import OperatorSettings
from loraplane.operator import cli
from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.fixtures import TOKEN

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: Short intervals so that the cluster tests take seconds.
FAST = OperatorSettings(namespace="default", progress_interval_s=0.05, health_interval_s=0.1)


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


@contextmanager
def operator(kubeconfig: Path, store_url: str, settings: OperatorSettings = FAST, **options: Any) -> Iterator[None]:
    """Run `loraplane operator` (through Kopf) in a thread until the block ends."""
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(
                cli.run_operator(settings, store_url=store_url, kubeconfig=str(kubeconfig), stop_flag=stop,
                                 ready_flag=ready, **options)
            )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        assert ready.wait(15) or errors, "operator did not start"
        assert not errors, errors
        yield
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive(), "operator did not stop"
    assert not errors, errors


def runtime_pod(name: str, url: str, *, ready: bool = True) -> dict[str, Any]:
    """An emulated runtime pod whose runtime API is at `url`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"loraplane.dev/component": "runtime"},
            "annotations": {"loraplane.dev/runtime-url": url},
        },
        "spec": {"containers": [{"name": "runtime", "image": "loraplane:test"}]},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def lorajob(name: str, *, base_model: str = "tiny", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": "default", "labels": {"loraplane.dev/tenant": "t"}},
        "spec": {"baseModel": base_model, "tenant": "t", "lora": {"rank": 4}, **spec},
    }


class Cluster:
    """Test-side access to the emulator: read jobs and events, patch and delete objects."""

    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator
        self.http = httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5.0)
        emulator.load_manifests(ROOT / "crds" / "lorajob.yaml")

    def add_pod(self, manifest: dict[str, Any]) -> None:
        """Create a pod and set its status, as the kubelet would (create ignores status)."""
        self.emulator.create(manifest)
        self.set_pod_status(manifest["metadata"]["name"], manifest["status"])

    def set_pod_status(self, name: str, status: dict[str, Any]) -> None:
        response = self.http.patch(
            f"/api/v1/namespaces/default/pods/{name}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text

    def job(self, name: str) -> dict[str, Any] | None:
        return self.emulator.get(API_VERSION, KIND, name, "default")

    def status(self, name: str) -> dict[str, Any]:
        return (self.job(name) or {}).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 15.0) -> dict[str, Any]:
        try:
            return wait_for(lambda: self.status(name).get("phase") == phase and self.status(name), timeout)
        except AssertionError:
            raise AssertionError(f"{name} not {phase} within {timeout}s; status: {self.status(name)}") from None

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        response = self.http.patch(
            f"/apis/{API_VERSION}/namespaces/default/{PLURAL}/{name}",
            json={"spec": spec},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text

    def delete_job(self, name: str) -> None:
        response = self.http.delete(f"/apis/{API_VERSION}/namespaces/default/{PLURAL}/{name}")
        assert response.status_code in (200, 202), response.text

    def delete_pod(self, name: str) -> None:
        response = self.http.delete(f"/api/v1/namespaces/default/pods/{name}")
        assert response.status_code in (200, 202), response.text

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.http.get("/api/v1/namespaces/default/events").json().get("items", [])
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]

    def close(self) -> None:
        self.http.close()
