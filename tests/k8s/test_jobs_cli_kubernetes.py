"""`loraplane jobs` against a gateway in Kubernetes mode: the same manifests, as custom resources.

The gateway's `/loraplane/v1/jobs` routes go through `KubeControlPlane` to the real API server,
which checks the manifest against the CRD (immutable fields included); the operator runs the job
on a fake runtime, and `describe` shows the Events the operator posted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.k8s.cluster import Cluster
from tests.k8s.gateway import GatewayServer, kubernetes_settings
from tests.operator.fake_runtime import FakeRuntime
from tests.operator.harness import operator, runtime_pod, wait_for

KEYS = {"alice": "tml-alice-0123456789", "bob": "tml-bob-0123456789"}
MANIFEST = {"apiVersion": "loraplane.dev/v1alpha1", "kind": "LoRAJob", "metadata": {"name": "chat"},
            "spec": {"baseModel": "tiny", "tenant": "alice", "lora": {"rank": 4}}}


@pytest.fixture
def gateway(cluster: Cluster, kubeconfig_path: Path, tmp_path: Path) -> Iterator[GatewayServer]:
    rt = FakeRuntime("tiny").start()
    store_url = f"file://{tmp_path / 'store'}"
    try:
        cluster.add_pod(runtime_pod("rt-0", rt.url))
        with operator(kubeconfig_path, store_url), GatewayServer(
            kubernetes_settings(), store_url, KEYS, kubeconfig=kubeconfig_path
        ) as gw:
            yield gw
    finally:
        rt.stop()


def jobs(gw: GatewayServer, *args: str, tenant: str = "alice", stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORAPLANE_URL": gw.url, "LORAPLANE_API_KEY": KEYS[tenant]}
    return subprocess.run([sys.executable, "-m", "loraplane", "jobs", *args], capture_output=True, text=True,
                          env=env, input=stdin, timeout=60)


def test_jobs_cli_applies_lists_describes_and_deletes_custom_resources(gateway: GatewayServer,
                                                                       cluster: Cluster) -> None:
    applied = jobs(gateway, "apply", "-f", "-", stdin=yaml.safe_dump(MANIFEST))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "lorajob.loraplane.dev/chat created"
    assert cluster.job("chat")["spec"]["tenant"] == "alice"
    cluster.wait_phase("chat", "Running", timeout=30)

    table = jobs(gateway, "get").stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "PHASE"] and table[1].split()[:3] == ["chat", "Running", "tiny"]
    wait_for(lambda: "Running" in [e["reason"] for e in cluster.events("chat")], what="the operator's Events")
    described = jobs(gateway, "describe", "chat").stdout
    assert "Events:" in described and "Running" in described.split("Events:")[1]

    assert "No resources found." in jobs(gateway, "get", tenant="bob").stdout
    assert jobs(gateway, "delete", "chat", tenant="bob").returncode == 2

    changed = {**MANIFEST, "spec": {**MANIFEST["spec"], "lora": {"rank": 8}}}
    refused = jobs(gateway, "apply", "-f", "-", stdin=yaml.safe_dump(changed))
    assert refused.returncode == 2 and "lora is immutable" in refused.stderr
    suspended = {**MANIFEST, "spec": {**MANIFEST["spec"], "suspend": True}}
    assert jobs(gateway, "apply", "-f", "-", stdin=yaml.safe_dump(suspended)).stdout.strip() == \
        "lorajob.loraplane.dev/chat configured"
    cluster.wait_phase("chat", "Suspended", timeout=30)

    assert jobs(gateway, "delete", "chat").returncode == 0
    wait_for(lambda: cluster.job("chat") is None, what="the job deleted")
